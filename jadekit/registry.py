"""Registry → plugins found through entry points, listed without importing, loaded on demand."""

from __future__ import annotations

import os
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from jadekit.errors import PluginError, plugin_failure

T = TypeVar("T")
CORE_DISTRIBUTION = "jadekit"
DISABLE_ENV = "JADEKIT_DISABLE_PLUGIN_AUTOLOAD"


@dataclass(frozen=True)
class PluginInfo:
    """One registered name, known from package metadata alone (nothing imported)."""

    name: str
    value: str  # "module:attribute"
    distribution: str
    version: str

    @property
    def provider(self) -> str:
        return f"{self.distribution} {self.version}"


def _info(ep: EntryPoint) -> PluginInfo:
    """Read an entry point's provider from metadata; broken metadata must not break listing."""
    dist = getattr(ep, "dist", None)
    name, version = "(unknown distribution)", "?"
    if dist is not None:
        try:
            name = dist.metadata["Name"] or name
            version = dist.version or version
        except Exception:  # unreadable METADATA: still list the name, with what is known
            pass
    return PluginInfo(ep.name, ep.value, name, version)


class Registry(Generic[T]):
    """Named plugins of one kind from one entry-point group.

    Args:
        group: entry-point group, e.g. `jadekit.datasets`.
        kind: human name of the kind, e.g. `dataset`.
        check: validates a loaded object; returns contract violations.
        discover: returns the group's entry points (injectable for tests).
    """

    def __init__(
        self,
        group: str,
        kind: str,
        check: Callable[[object], list[str]],
        discover: Callable[[str], Iterable[EntryPoint]] | None = None,
    ) -> None:
        self.group = group
        self.kind = kind
        self._check = check
        self._discover = discover or (lambda g: entry_points(group=g))
        self._loaded: dict[str, T] = {}

    def infos(self) -> dict[str, list[PluginInfo]]:
        """Every registered name with its providers (several = a conflict); imports nothing."""
        only_core = os.environ.get(DISABLE_ENV, "") not in ("", "0")
        found: dict[str, list[PluginInfo]] = {}
        try:
            discovered = list(self._discover(self.group))
        except Exception as e:  # e.g. a distribution with an unparsable entry_points.txt
            raise PluginError(
                f"cannot read the {self.group} entry points of the installed distributions: {type(e).__name__}: {e}",
                hint=f"set {DISABLE_ENV}=1 to use the built-ins only, and reinstall the broken distribution.",
            ) from None
        for ep in discovered:
            info = _info(ep)
            if only_core and info.distribution != CORE_DISTRIBUTION:
                continue
            providers = found.setdefault(info.name, [])
            # The same distribution can be seen twice (e.g. editable + regular metadata).
            if all((p.distribution, p.value) != (info.distribution, info.value) for p in providers):
                providers.append(info)
        return dict(sorted(found.items()))

    def elsewhere(self, name: str) -> str:
        """The fix when `name` is registered under another `jadekit*` entry-point group (a typo in the group, or the
        other kind of plugin), else ""."""
        try:
            groups = sorted(g for g in entry_points().groups if g.startswith("jadekit") and g != self.group)
            found = [ep for g in groups for ep in entry_points(group=g) if ep.name == name]
        except Exception:  # broken metadata: the plain hint will do
            return ""
        if not found:
            return ""
        ep, known = found[0], {r.group: r.kind for r in (datasets, backbones)}
        who = _info(ep).distribution
        if ep.group in known:
            return f"'{name}' is a {known[ep.group]} (from {who}), not a {self.kind}: name a {self.kind} here."
        return (f"{who} registers '{name}' under the entry-point group '{ep.group}', which jadekit does not read: "
                f"write '{self.group}' in its pyproject.toml, then reinstall it (pip install -e .).")

    def names(self) -> list[str]:
        return list(self.infos())

    def info(self, name: str) -> PluginInfo:
        """The single provider of `name`; errors list the available names or both providers."""
        infos = self.infos()
        if name not in infos:
            available = ", ".join(infos) or "(none installed)"
            raise PluginError(
                f"unknown {self.kind} '{name}'. Available: {available}.",
                hint=self.elsewhere(name) or "fix the name, or install the plugin that provides it (`jadekit plugins "
                "list`); an entry point added to a package installed with `pip install -e` needs that install again.",
            )
        providers = infos[name]
        if len(providers) > 1:
            both = " and ".join(p.provider for p in providers)
            raise PluginError(
                f"{self.kind} '{name}' is registered by {both}.",
                hint="uninstall one of these distributions.",
            )
        return providers[0]

    def load(self, name: str) -> T:
        """Import and return the plugin object named `name`, checked against its contract."""
        if name in self._loaded:
            return self._loaded[name]
        info = self.info(name)
        try:
            obj = EntryPoint(info.name, info.value, self.group).load()
        except Exception as e:  # a broken plugin must only break runs that name it
            module = info.value.partition(":")[0].strip()
            raise PluginError(
                f"{self.kind} '{name}' from {info.provider} failed to import: {plugin_failure(e, module)}",
                hint=f"reinstall or fix {info.distribution}, or pick another {self.kind}.",
            ) from e
        if isinstance(obj, type):  # classes are instantiated without arguments
            try:
                obj = obj()
            except Exception as e:
                raise PluginError(
                    f"{self.kind} '{name}' from {info.provider} cannot be instantiated: {plugin_failure(e, obj)}",
                    hint=f"a plugin class must build with no arguments; fix {info.distribution}, or make its entry point an instance.",
                ) from e
        problems = self._check(obj)
        if problems:
            module = f" names module {obj.__name__}, not a class" if isinstance(obj, types.ModuleType) else ""
            raise PluginError(
                f"{self.kind} '{name}' from {info.provider} breaks the {self.kind} contract: its entry point "
                f"`{info.value}`{module}: " + "; ".join(problems),
                hint=f"point the entry point at the {self.kind} class (`module:Class`) in {info.distribution}'s "
                     "pyproject.toml, then reinstall it (pip install -e .); docs/plugins.md shows the contract.",
            )
        self._loaded[name] = obj
        return obj


def _has(obj: object, methods: tuple[str, ...]) -> list[str]:
    from pydantic import BaseModel

    problems = [f"missing method {m}()" for m in methods if not callable(getattr(obj, m, None))]
    params = getattr(obj, "Params", None)
    if not (isinstance(params, type) and issubclass(params, BaseModel)):
        problems.append("missing `Params` (a pydantic BaseModel subclass)")
    return problems


def check_dataset_object(obj: object) -> list[str]:
    """Structural contract of a dataset adapter (see jadekit.data.base.DatasetAdapter)."""
    return _has(obj, ("info", "load"))


def check_backbone_object(obj: object) -> list[str]:
    """Structural contract of a backbone (see jadekit.backbones.base.Backbone)."""
    return _has(obj, ("encoder", "decoder"))


datasets: Registry = Registry("jadekit.datasets", "dataset", check_dataset_object)
backbones: Registry = Registry("jadekit.backbones", "backbone", check_backbone_object)
