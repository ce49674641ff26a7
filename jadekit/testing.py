"""Conformance checks for dataset adapters and backbones, for plugin authors' own test suites.

`check_dataset` / `check_backbone` return every contract violation found (an empty list
means the plugin conforms); `assert_dataset` / `assert_backbone` raise `ConformanceError`
listing them all, which reads well in pytest:

    from jadekit.testing import assert_backbone, assert_dataset

    def test_my_dataset(tmp_path):
        assert_dataset(MyDataset(), root=tmp_path, params={"size": 32})

`jadekit plugins check NAME` runs the same checks on an installed plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError

from jadekit.data.base import DatasetInfo, ImageSet, validate_image_set
from jadekit.errors import DataError, InvalidImageSet, PluginError, plugin_failure
from jadekit.registry import check_backbone_object, check_dataset_object

DEFAULT_SHAPES: tuple[tuple[int, int, int], ...] = ((1, 28, 28), (3, 32, 32))
DEFAULT_LATENT_DIMS: tuple[int, ...] = (1, 2, 10, 33)


class ConformanceError(PluginError, AssertionError):
    """A plugin breaks its contract; `problems` lists every violation found."""

    def __init__(self, what: str, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{what} breaks the contract ({len(problems)} problem(s)):\n{lines}", hint="see docs/plugins.md.")


def _validate_params(obj: object, params: BaseModel | Mapping[str, Any] | None, problems: list[str]) -> BaseModel | None:
    """The plugin's own Params model applied to `params` (defaults when None)."""
    model = getattr(obj, "Params", None)
    if isinstance(params, BaseModel):
        if model is not None and not isinstance(params, model):
            problems.append(f"params is a {type(params).__name__}, expected {model.__name__}")
            return None
        return params
    try:
        return model.model_validate(dict(params or {}))
    except ValidationError as e:
        where = "the default parameters" if not params else f"params {dict(params)}"
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        problems.append(f"Params rejects {where}: {loc}: {first['msg']} (pass params= to the check)")
        return None


def _prepare(
    obj: object, check_object: Callable[[object], list[str]], params: BaseModel | Mapping[str, Any] | None
) -> tuple[object, BaseModel | None, list[str]]:
    """The common start of a check: instantiate a class, check the object's structure, then validate `params`.

    Returns the object, its Params (None when the check cannot go on) and the problems found so far.
    """
    if isinstance(obj, type):
        obj = obj()
    problems = check_object(obj)
    if problems:
        return obj, None, problems
    if obj.Params.model_config.get("extra") != "forbid":
        problems.append('Params accepts unknown keys: a misspelt recipe key would silently keep its default; '
                        'set model_config = ConfigDict(extra="forbid")')
    return obj, _validate_params(obj, params, problems), problems


# ----------------------------------------------------------------------------------- datasets


def _check_info(info: object) -> list[str]:
    if not isinstance(info, DatasetInfo):
        return [f"info() returned {type(info).__name__}, expected jadekit.data.base.DatasetInfo"]
    problems = []
    names = info.class_names
    if not isinstance(names, tuple) or not all(isinstance(n, str) and n for n in names):
        problems.append("info().class_names must be a tuple of non-empty strings")
    elif len(names) < 2:
        problems.append(f"info() declares {len(names)} class(es); a classifier needs at least 2")
    elif len(set(names)) != len(names):
        problems.append(f"info().class_names has duplicates: {list(names)}")
    shape = info.image_shape
    if not (isinstance(shape, tuple) and len(shape) == 3 and all(isinstance(d, int) and d > 0 for d in shape)):
        problems.append(f"info().image_shape must be (C, H, W) of positive ints, got {shape!r}")
    return problems


def _load(
    adapter: object, root: Path, split: str, params: BaseModel, download: bool, problems: list[str], raise_data_errors: bool
) -> ImageSet | None:
    try:
        data = adapter.load(root, split, params, download)
    except Exception as e:  # every failure is a finding, including DataError for missing files unless asked to raise it
        if raise_data_errors and isinstance(e, DataError):
            raise
        if isinstance(e, InvalidImageSet):  # the ImageSet it built breaks the contract
            problems.append(f"load(split={split!r}) built an invalid ImageSet: {'; '.join(e.problems)}")
        else:
            problems.append(f"load(split={split!r}) raised {plugin_failure(e, adapter)}")
        return None
    if not isinstance(data, ImageSet):
        problems.append(f"load(split={split!r}) returned {type(data).__name__}, expected jadekit.data.base.ImageSet")
        return None
    return data


def _check_split(split: str, data: ImageSet, info: DatasetInfo) -> list[str]:
    problems = [f"{split}: {p}" for p in validate_image_set(data)]
    if problems:
        return problems
    if len(data) == 0:
        problems.append(f"{split}: no samples")
    if data.image_shape != tuple(info.image_shape):
        problems.append(f"{split}: images have shape {data.image_shape}, but info() declares {tuple(info.image_shape)}")
    if tuple(data.class_names) != tuple(info.class_names):
        problems.append(f"{split}: class_names {list(data.class_names)} differ from info() {list(info.class_names)}")
    if data.groups is not None and data.groups.dtype != torch.int64:
        problems.append(f"{split}: groups must be int64, got {data.groups.dtype}")
    if not all(isinstance(f, Path) for f in data.files):
        problems.append(f"{split}: files must be pathlib.Path objects")
    return problems


def _same(a: ImageSet, b: ImageSet) -> bool:
    same_groups = (a.groups is None) == (b.groups is None) and (a.groups is None or torch.equal(a.groups, b.groups))
    return (
        a.images.shape == b.images.shape
        and torch.equal(a.images, b.images)
        and torch.equal(a.labels, b.labels)
        and same_groups
        and tuple(a.files) == tuple(b.files)
    )


def _check_disjoint(train: ImageSet, test: ImageSet) -> list[str]:
    """Train/test overlap, as far as the adapter tells: shared groups (patients) or per-image files."""
    problems = []
    if train.groups is not None and test.groups is not None:
        shared = set(train.groups.tolist()) & set(test.groups.tolist())
        if shared:
            problems.append(f"groups {sorted(shared)[:5]} appear in both train and test (e.g. a patient in both splits)")
    per_image = len(train.files) == len(train) and len(test.files) == len(test)
    if per_image:
        shared_files = set(train.files) & set(test.files)
        if shared_files:
            problems.append(f"{len(shared_files)} file(s) in both train and test, e.g. {sorted(shared_files)[0]}")
    return problems


def check_dataset(
    adapter: object,
    root: str | Path | None = None,
    params: BaseModel | Mapping[str, Any] | None = None,
    *,
    splits: Sequence[str] = ("train", "test"),
    download: bool = False,
    determinism: bool = True,
    raise_data_errors: bool = False,
) -> list[str]:
    """Check a dataset adapter against the contract; returns every problem found.

    Without `root`, only the structure, `Params` and `info()` are checked (no file is read).
    With it, each split is loaded (twice, for determinism) and checked against `info()`:
    dtypes and shapes, label range, class names, and train/test disjointness where the
    adapter tells (`groups`, or one file per image).

    Args:
        adapter: the adapter object (an instance; a class is instantiated without arguments).
        root: data root passed to `load`.
        params: the adapter's Params instance, or a dict validated by it (defaults when None).
        splits: the splits to load.
        download: passed to `load`.
        determinism: load each split twice and require equal results.
        raise_data_errors: let a DataError from `load` (missing or corrupt files, the contract's way
            to fail) propagate instead of listing it, to tell absent data from a broken adapter.

    Raises:
        DataError: only with `raise_data_errors`, as `load` raised it.
    """
    adapter, p, problems = _prepare(adapter, check_dataset_object, params)
    if p is None:
        return problems
    try:
        info = adapter.info(p)
    except Exception as e:
        return [*problems, f"info() raised {plugin_failure(e, adapter)}"]
    problems += _check_info(info)
    if problems or root is None:
        return problems
    loaded: dict[str, ImageSet] = {}
    for split in splits:
        data = _load(adapter, Path(root), split, p, download, problems, raise_data_errors)
        if data is None:
            continue
        split_problems = _check_split(split, data, info)
        problems += split_problems
        if split_problems:
            continue
        loaded[split] = data
        if determinism:
            again = _load(adapter, Path(root), split, p, download, problems, raise_data_errors)
            if again is not None and not _same(data, again):
                problems.append(f"{split}: two loads with the same params differ (the split must be deterministic)")
    if "train" in loaded and "test" in loaded:
        problems += _check_disjoint(loaded["train"], loaded["test"])
    return problems


def assert_dataset(adapter: object, root: str | Path | None = None, params: BaseModel | Mapping[str, Any] | None = None,
                   **kwargs: Any) -> None:
    """`check_dataset`, raising ConformanceError when anything is wrong."""
    problems = check_dataset(adapter, root, params, **kwargs)
    if problems:
        raise ConformanceError(f"dataset {type(adapter).__name__}", problems)


# ---------------------------------------------------------------------------------- backbones


def _check_pair(backbone: object, shape: tuple[int, int, int], latent: int, params: BaseModel, batch: int) -> list[str]:
    """One encoder and one decoder at a given image shape and latent size; DataError = unsupported shape."""
    where = f"shape {shape}, latent {latent}"
    enc = backbone.encoder(shape, latent, params)
    dec = backbone.decoder(latent, shape, params)
    problems = []
    for role, module in (("encoder", enc), ("decoder", dec)):
        if not isinstance(module, torch.nn.Module):
            problems.append(f"{role}({where}) returned {type(module).__name__}, expected torch.nn.Module")
    if problems:
        return problems
    g = torch.Generator().manual_seed(0)
    x = torch.rand((batch, *shape), generator=g)
    z = torch.randn((batch, latent), generator=g)
    try:
        y = enc(x)
    except Exception as e:
        return [f"encoder({where}) fails on a batch {tuple(x.shape)}: {plugin_failure(e, backbone)}"]
    if not isinstance(y, torch.Tensor) or tuple(y.shape) != (batch, latent):
        got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        problems.append(f"encoder({where}) output is {got}, expected {(batch, latent)}")
    elif not y.is_floating_point() or not torch.isfinite(y).all():
        problems.append(f"encoder({where}) output must be finite floats")
    try:
        r = dec(z)
    except Exception as e:
        return [*problems, f"decoder({where}) fails on latents {tuple(z.shape)}: {plugin_failure(e, backbone)}"]
    if not isinstance(r, torch.Tensor) or tuple(r.shape) != (batch, *shape):
        got = tuple(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__
        problems.append(f"decoder({where}) output is {got}, expected {(batch, *shape)} (the input shape)")
    elif not r.is_floating_point() or not torch.isfinite(r).all():
        problems.append(f"decoder({where}) output must be finite floats")
    if not problems:  # gradients must reach the parameters, or nothing trains
        (y.sum() + r.sum()).backward()
        for role, module in (("encoder", enc), ("decoder", dec)):
            params_ = [q for q in module.parameters() if q.requires_grad]
            if not params_:
                problems.append(f"{role}({where}) has no trainable parameters")
            elif all(q.grad is None for q in params_):
                problems.append(f"{role}({where}): no gradient reaches its parameters")
    return problems


def check_backbone(
    backbone: object,
    params: BaseModel | Mapping[str, Any] | None = None,
    *,
    shapes: Sequence[tuple[int, int, int]] = DEFAULT_SHAPES,
    latent_dims: Sequence[int] = DEFAULT_LATENT_DIMS,
    batch: int = 3,
    shapes_option: str = "shapes=",
) -> list[str]:
    """Check a backbone against the contract; returns every problem found.

    For each image shape and latent size: the encoder maps (B, C, H, W) to (B, latent), the
    decoder maps (B, latent) back to (B, C, H, W), outputs are finite and gradients reach the
    parameters. A shape the backbone cannot handle must raise `jadekit.errors.DataError`
    (it is then skipped), but at least one shape must work.

    Args:
        backbone: the backbone object (a class is instantiated without arguments).
        params: the backbone's Params instance, or a dict validated by it (defaults when None).
        shapes: image shapes (C, H, W) to try.
        latent_dims: latent / output sizes to try.
        batch: batch size of the probe tensors.
        shapes_option: how the caller passes other shapes, named when none works (`--shape C,H,W` in the CLI).
    """
    backbone, p, problems = _prepare(backbone, check_backbone_object, params)
    if p is None:
        return problems
    supported, refusal = [], ""
    for shape in shapes:
        shape = tuple(int(d) for d in shape)
        try:
            for latent in latent_dims:
                problems += _check_pair(backbone, shape, latent, p, batch)
            supported.append(shape)
        except DataError as e:  # the documented way to refuse a shape
            refusal = refusal or f"{shape}: {e.message}"
        except Exception as e:
            problems.append(f"building for shape {shape} raised {plugin_failure(e, backbone)} "
                            "(refuse shapes with DataError)")
    if not supported and not problems:
        problems.append(f"accepts none of the shapes tried {[tuple(s) for s in shapes]} (first refusal: {refusal}); "
                        f"pass {shapes_option} with the ones it is meant for")
    return problems


def assert_backbone(backbone: object, params: BaseModel | Mapping[str, Any] | None = None, **kwargs: Any) -> None:
    """`check_backbone`, raising ConformanceError when anything is wrong."""
    problems = check_backbone(backbone, params, **kwargs)
    if problems:
        raise ConformanceError(f"backbone {type(backbone).__name__}", problems)
