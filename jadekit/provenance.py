"""What produced a run: versions of python, torch, jadekit and each plugin, plus the machine."""

from __future__ import annotations

import platform
import sys
from importlib.metadata import PackageNotFoundError, version

import torch

from jadekit.build import Resolved
from jadekit.registry import backbones, datasets


def _version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def versions(resolved: Resolved | None = None) -> dict[str, object]:
    """Versions of the stack, and the distribution providing each plugin the recipe names."""
    out: dict[str, object] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "jadekit": _version("jadekit"),
        "platform": platform.platform(),
        "machine": platform.machine(),
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
