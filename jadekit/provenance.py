"""What produced a run: versions of python, torch, jadekit and each plugin, plus the machine."""

from __future__ import annotations

import functools
import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from jadekit.build import Resolved
from jadekit.registry import backbones, datasets


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


@functools.cache
def _git_commit() -> str | None:
    """The commit of the jadekit checkout in use ("+dirty" with uncommitted changes); None unless jadekit runs from
    its own git checkout (an editable install), e.g. not from a site-packages that happens to lie in some repository.

    Asked once per process (three git calls), not once per run: the code a process runs is imported once.
    """
    here = Path(__file__).resolve().parent
    git = ["git", "--no-optional-locks", "-C", str(here)]  # never take the index lock of the user's checkout
    try:
        top = subprocess.run([*git, "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=10)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != here.parent:
            return None
        head = subprocess.run([*git, "rev-parse", "--verify", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:  # a repository without commits
            return None
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def cpu_capability() -> str | None:
    """The CPU kernel set torch dispatches to ("AVX2", "AVX512", ...): CPU runs repeat bit for bit only on the same.
    None where this torch cannot tell."""
    get = getattr(torch.backends.cpu, "get_cpu_capability", None)
    return get() if get else None


def versions(resolved: Resolved | None = None) -> dict[str, object]:
    """Versions of the stack, and the distribution providing each plugin the recipe names."""
    out: dict[str, object] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "jadekit": _version("jadekit"),
        "jadekit_commit": _git_commit(),
        "timm": _version("timm"),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_capability": cpu_capability(),
        "cuda": torch.version.cuda,
    }
    if resolved is not None:
        plugins = {}
        for d in (resolved.primary, resolved.auxiliary):
            for reg, name in ((datasets, d.name), (backbones, d.backbone_name)):
                info = reg.info(name)
                plugins[f"{reg.kind}:{name}"] = {"distribution": info.distribution, "version": info.version}
        out["plugins"] = plugins
    return out
