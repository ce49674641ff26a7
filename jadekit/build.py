"""Config → objects: resolve plugin names, validate their tables, build the models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from jadekit import registry
from jadekit.backbones.base import Backbone
from jadekit.config import (
    METHODS,
    DataConfig,
    Method,
    ModelConfig,
    Recipe,
    apply_overrides,
    format_validation_error,
    known_parameters,
    read_toml,
    recipe_from_dict,
    recipe_source,
)
from jadekit.data.base import DatasetAdapter, DatasetInfo
from jadekit.engine.models import Classifier, Jade, PairedClassifier, SingleClassifier
from jadekit.errors import JadekitError, RecipeError, plugin_failure

DOMAINS = ("primary", "auxiliary")


@dataclass(frozen=True)
class DomainSpec:
    """One dataset of the pair, resolved: adapter, its validated params, and what it declares."""

    name: str
    adapter: DatasetAdapter
    params: BaseModel
    info: DatasetInfo  # image_shape already reflects the recipe's `resize`
    backbone_name: str
    backbone: Backbone
    backbone_params: BaseModel


@dataclass(frozen=True)
class Resolved:
    """Everything a recipe names, loaded and validated; no tensors yet."""

    recipe: Recipe
    primary: DomainSpec
    auxiliary: DomainSpec

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.primary.info.class_names


def _params(model: type[BaseModel], raw: dict[str, Any], path: str, owner: str, problems: list[str]) -> BaseModel | None:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        unknown = f"unknown parameter of '{owner}' ({known_parameters(model)})"
        problems.extend(format_validation_error(e, prefix=path, unknown=unknown))
        return None


def _load(reg: registry.Registry, name: str, path: str, problems: list[str], causes: list[Exception]) -> Any:
    try:
        return reg.load(name)
    except JadekitError as e:
        problems.append(f"{path}: {e}")
        if e.__cause__ is not None:  # a plugin that fails to import: its traceback under JADEKIT_DEBUG
            causes.append(e)
        return None


def _domain(domain: str, data: DataConfig, model: ModelConfig, problems: list[str],
            causes: list[Exception]) -> DomainSpec | None:
    adapter = _load(registry.datasets, data.dataset, f"{domain}.dataset", problems, causes)
    bb_cfg = model.primary_backbone if domain == "primary" else model.auxiliary_backbone
    bb_path = f"model.{domain}_backbone"
    backbone = _load(registry.backbones, bb_cfg.name, f"{bb_path}.name", problems, causes)
    params = _params(adapter.Params, data.params, f"{domain}.params", data.dataset, problems) if adapter else None
    bb_params = _params(backbone.Params, bb_cfg.params, f"{bb_path}.params", bb_cfg.name, problems) if backbone else None
    if params is None or bb_params is None:
        return None
    try:
        info = adapter.info(params)
    except Exception as e:
        problems.append(f"{domain}.dataset: '{data.dataset}' failed to describe itself: {plugin_failure(e, adapter)}")
        causes.append(e)  # a plugin's own bug: its traceback under JADEKIT_DEBUG
        return None
    if data.resize is not None:
        info = DatasetInfo(info.class_names, (info.image_shape[0], *data.resize))
    return DomainSpec(data.dataset, adapter, params, info, bb_cfg.name, backbone, bb_params)


def resolve(recipe: Recipe, source: str | None = None) -> Resolved:
    """Resolve every plugin name and validate every plugin table, reporting all problems at once."""
    problems: list[str] = []
    causes: list[Exception] = []
    specs = {d: _domain(d, getattr(recipe, d), recipe.model, problems, causes) for d in DOMAINS}
    p, a = specs["primary"], specs["auxiliary"]
    if p and a and p.info.class_names != a.info.class_names:
        problems.append(
            f"auxiliary.dataset: classes differ: primary '{p.name}' has {list(p.info.class_names)}, "
            f"auxiliary '{a.name}' has {list(a.info.class_names)}; JADE needs the same classes in the same order "
            "(fix: set both datasets' class lists, e.g. a `classes` param, to the same names in the same order)"
        )
    if problems:
        raise RecipeError(problems, source=source) from (causes[0] if causes else None)
    return Resolved(recipe, p, a)


def _unknown_names(raw: dict[str, Any]) -> list[str]:
    """Plugin-name problems found in a raw recipe dict (used when its structure is invalid too)."""
    problems = []
    for path, reg in (
        ("primary.dataset", registry.datasets),
        ("auxiliary.dataset", registry.datasets),
        ("model.primary_backbone.name", registry.backbones),
        ("model.auxiliary_backbone.name", registry.backbones),
    ):
        value: Any = raw
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            try:
                reg.info(value)
            except JadekitError as e:
                problems.append(f"{path}: {e.message} {reg.elsewhere(value)}".rstrip())
    return problems


def load_resolved(path: Path, overrides: list[str] | None = None) -> Resolved:
    """Read, override, validate and resolve a recipe file, reporting every problem at once."""
    raw = apply_overrides(read_toml(path), overrides or [])
    source = recipe_source(path, overrides)
    try:
        recipe = recipe_from_dict(raw, source=source)
    except RecipeError as e:
        raise RecipeError(e.problems + _unknown_names(raw), source=source) from None
    return resolve(recipe, source=source)


def build_model(method: Method, resolved: Resolved) -> nn.Module:
    """Build one of the paper's models from the resolved backbones (fresh, channels-last weights)."""
    return _build(method, resolved).to(memory_format=torch.channels_last)


def _build(method: Method, resolved: Resolved) -> nn.Module:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}")
    m = resolved.recipe.model
    n_classes = len(resolved.class_names)
    classifier = Classifier(m.content_dim, list(m.classifier_hidden), n_classes, m.dropout)
    p, a = resolved.primary, resolved.auxiliary
    if method == "single":
        return SingleClassifier(p.backbone.encoder(p.info.image_shape, m.content_dim, p.backbone_params), classifier)
    if method == "paired":
        return PairedClassifier(
            p.backbone.encoder(p.info.image_shape, m.content_dim, p.backbone_params),
            a.backbone.encoder(a.info.image_shape, m.content_dim, a.backbone_params),
            classifier,
        )
    return Jade(
        p.backbone.encoder(p.info.image_shape, 2 * m.latent_dim, p.backbone_params),
        a.backbone.encoder(a.info.image_shape, 2 * m.latent_dim, a.backbone_params),
        p.backbone.decoder(m.latent_dim, p.info.image_shape, p.backbone_params),
        a.backbone.decoder(m.latent_dim, a.info.image_shape, a.backbone_params),
        classifier,
        m.content_dim,
        m.classifier_input,
    )


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters of each top-level module (`primary_encoder`, ..., `classifier`) and the total."""
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts
