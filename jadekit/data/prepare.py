"""Adapters → tensors: load both splits, resize, draw the labelled subset and the validation split."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from jadekit.config import DataConfig
from jadekit.data.base import ImageSet, Split
from jadekit.data.splits import stratified_subset, train_val_split
from jadekit.errors import DataError, InvalidImageSet, JadekitError, PluginError, plugin_failure


@dataclass(frozen=True)
class DomainData:
    """One dataset ready for training: uint8 images and labels per split, and the drawn indices."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: tuple[str, ...]
    indices: dict[str, list[int]]  # positions in the adapter's train split

    def to(self, device: torch.device) -> DomainData:
        fields = {k: getattr(self, k).to(device) for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")}
        return DomainData(**fields, class_names=self.class_names, indices=self.indices)


def resize_images(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize uint8 images (N, C, H, W) with antialiased bilinear interpolation, in chunks."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    out = torch.empty((*images.shape[:2], *size), dtype=torch.uint8)
    for i in range(0, len(images), 4096):
        chunk = F.interpolate(images[i : i + 4096].float(), size=size, mode="bilinear", antialias=True)
        out[i : i + 4096] = chunk.round_().clamp_(0, 255).to(torch.uint8)
    return out


def load_split(name: str, adapter, params, cfg: DataConfig, split: Split, expected_shape,
               expected_classes: tuple[str, ...] | None = None) -> ImageSet:
    """Load one split through its adapter, apply `resize`, and check it against what was declared (its `info()`)."""
    try:
        data = adapter.load(cfg.data_root(), split, params, cfg.download)
    except InvalidImageSet as e:  # the ImageSet it built breaks the contract: say which dataset and split
        raise PluginError(f"dataset '{name}' returned invalid {split} data: {'; '.join(e.problems)}",
                          hint=f"fix the load() of the plugin that provides '{name}' (docs/plugins.md, the ImageSet "
                               f"contract); `jadekit plugins check {name}` checks it alone.") from None
    except JadekitError:
        raise
    except Exception as e:  # a plugin bug must not surface as a traceback
        raise PluginError(
            f"dataset '{name}' failed to load its {split} split: {plugin_failure(e, adapter)}",
            hint=f"if a data file is damaged, replace it; else fix or reinstall the plugin that provides '{name}' "
            f"(`jadekit plugins check {name}`; a plugin should raise DataError naming a bad file, docs/plugins.md).",
        ) from e
    if not isinstance(data, ImageSet):
        raise PluginError(
            f"dataset '{name}' returned {type(data).__name__}, expected jadekit.data.base.ImageSet",
            hint=f"fix the plugin that provides '{name}' (see docs/plugins.md, `jadekit plugins check {name}`).",
        )
    if expected_classes is not None and tuple(data.class_names) != tuple(expected_classes):
        raise PluginError(f"dataset '{name}' ({split}) returned class_names {list(data.class_names)}, but its info() "
                          f"declares {list(expected_classes)}",
                          hint=f"fix the plugin that provides '{name}': load() and info() must name the same classes in "
                               f"the same order (`jadekit plugins check {name}` checks it alone).")
    if cfg.resize is not None:
        data = ImageSet(resize_images(data.images, cfg.resize), data.labels, data.class_names, data.files, data.groups)
    if data.image_shape != tuple(expected_shape):
        raise DataError(
            f"dataset '{name}' ({split}) returned images of shape {data.image_shape}, "
            f"but declared {tuple(expected_shape)}",
            hint="fix the adapter's info(), or set `resize` in the recipe's data table." if
            data.image_shape[0] == expected_shape[0] else
            f"fix the plugin that provides '{name}': info() and load() must agree on the channels (`resize` changes "
            "only height and width).",
        )
    return data


def prepare_domain(train: ImageSet, test: ImageSet, cfg: DataConfig, seed: int, what: str) -> DomainData:
    """Draw the seeded labelled subset of `train` and carve the validation split from it."""
    g = torch.Generator().manual_seed(seed)
    picked = stratified_subset(train.labels, cfg.labels_per_class, cfg.limit, g, train.class_names, what, groups=train.groups)
    tr, va = train_val_split(picked, train.labels, cfg.val_share, g, groups=train.groups)  # patients kept whole
    if cfg.val_share > 0 and len(va) == 0:
        unit = "patients (groups)" if train.groups is not None else "images"
        raise DataError(f"{what}: val_share = {cfg.val_share} sets nothing aside: no class has two {unit} in the "
                        f"labelled subset of {len(picked)} images",
                        hint="raise labels_per_class (or limit), or set val_share = 0 to validate on the training images.")
    return DomainData(
        train.images[tr], train.labels[tr], train.images[va], train.labels[va], test.images, test.labels,
        train.class_names, {"train": tr.tolist(), "val": va.tolist()},
    )


def fingerprint(files: tuple[Path, ...]) -> dict[str, dict[str, object]]:
    """SHA-256 and size of each data file read (recorded in each run's provenance)."""
    out = {}
    for f in files:
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[str(f)] = {"sha256": h.hexdigest(), "bytes": f.stat().st_size}
    return out
