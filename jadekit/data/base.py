"""The dataset contract: what an adapter declares and what it returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal, Protocol, runtime_checkable

import torch
from pydantic import BaseModel, ConfigDict

from jadekit.errors import InvalidImageSet

Split = Literal["train", "test"]
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))


class NoParams(BaseModel):
    """Parameter model of an adapter or backbone that takes no parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class DatasetInfo:
    """What an adapter declares before any file is read."""

    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # C, H, W as returned by `load`


@dataclass(frozen=True)
class ImageSet:
    """A labelled image set held in memory as tensors.

    Attributes:
        images: uint8 tensor (N, C, H, W); normalised to [0, 1] per batch by the engine.
        labels: int64 tensor (N,) with values in [0, len(class_names)).
        class_names: one name per class, in label order.
        files: the files read, fingerprinted into each run's provenance record.
        groups: optional int64 tensor (N,) of group ids (e.g. patients) that splits keep whole.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    files: tuple[Path, ...] = ()
    groups: torch.Tensor | None = field(default=None)

    def __post_init__(self) -> None:
        problems = validate_image_set(self)
        if problems:
            raise InvalidImageSet(problems)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]


def validate_image_set(s: ImageSet) -> list[str]:
    """Return the contract violations of an ImageSet (empty when it is valid)."""
    problems = []
    if not isinstance(s.images, torch.Tensor) or s.images.dtype != torch.uint8 or s.images.dim() != 4:
        problems.append(f"images must be a uint8 tensor of shape (N, C, H, W), got {_described(s.images)}")
    if not isinstance(s.labels, torch.Tensor) or s.labels.dtype != torch.int64 or s.labels.dim() != 1:
        problems.append(f"labels must be an int64 tensor of shape (N,), got {_described(s.labels)}")
    if problems:
        return problems
    if s.images.shape[0] != s.labels.shape[0]:
        problems.append(f"{s.images.shape[0]} images but {s.labels.shape[0]} labels")
    if len(s.labels) and (int(s.labels.min()) < 0 or int(s.labels.max()) >= len(s.class_names)):
        problems.append(f"labels must lie in [0, {len(s.class_names)}) (one per class name), "
                        f"got {int(s.labels.min())}..{int(s.labels.max())}")
    if s.groups is not None and tuple(s.groups.shape) != tuple(s.labels.shape):
        problems.append("groups must have one entry per image")
    return problems


def _described(x: object) -> str:
    """'float32 (300, 1, 24, 24)': a tensor's dtype and shape, or the type of anything else."""
    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype).removeprefix('torch.')} {tuple(x.shape)}"
    return type(x).__name__


@runtime_checkable
class DatasetAdapter(Protocol):
    """A labelled image dataset, registered under the `jadekit.datasets` entry-point group.

    `Params` is the pydantic model of the recipe's `[primary.params]` / `[auxiliary.params]`
    table; the adapter owns it. `info` must not read files; `load` raises
    `jadekit.errors.DataError` naming the expected files when they are missing or corrupt.
    """

    Params: ClassVar[type[BaseModel]]

    def info(self, params: BaseModel) -> DatasetInfo: ...

    def load(self, root: Path, split: Split, params: BaseModel, download: bool) -> ImageSet: ...
