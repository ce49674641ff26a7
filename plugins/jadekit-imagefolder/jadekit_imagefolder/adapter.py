"""The `imagefolder` dataset: PNG/JPEG files in one folder per class, resized on load."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator

from jadekit.data.base import DatasetInfo, ImageSet, Split
from jadekit.errors import DataError

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})


class ImageFolderParams(BaseModel):
    """The recipe's `params` table: where the tree is, its classes, and the size to load at."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="The tree's folder: absolute, or relative to the data root.")
    classes: list[str] = Field(min_length=2, description="Class folder names, in label order.")
    size: tuple[PositiveInt, PositiveInt] = Field((32, 32), description="[H, W] every image is resized to.")
    channels: Literal[1, 3] = Field(3, description="1 = convert to grey, 3 = convert to RGB.")
    test_share: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="Unset: the tree has train/ and test/ subfolders. Set: split each class folder, seeded.",
    )
    split_seed: int = Field(0, description="Seed of the split when test_share is set.")

    @field_validator("classes")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v) or any(not c or "/" in c for c in v):
            raise ValueError("classes must be distinct folder names")
        return v


class ImageFolder:
    """Images under `<path>/<class>/` (seeded split) or `<path>/{train,test}/<class>/`.

    Any size, grey or colour; converted to `channels` and resized to `size` with a bilinear
    filter. Files are read in sorted order, so loads are deterministic.
    """

    Params: ClassVar[type[BaseModel]] = ImageFolderParams

    def info(self, params: ImageFolderParams) -> DatasetInfo:
        """Classes and shape come from the params (no file is read)."""
        return DatasetInfo(class_names=tuple(params.classes), image_shape=(params.channels, *params.size))

    def load(self, root: Path, split: Split, params: ImageFolderParams, download: bool) -> ImageSet:
        """Read one split.

        Raises:
            DataError: the folders do not match the params, hold no image, or an image is unreadable.
        """
        base = Path(root) / params.path  # an absolute `path` replaces the root
        files, labels = _split_files(base, split, params)
        images = np.stack([_read(f, params) for f in files])
        return ImageSet(
            images=torch.from_numpy(images),
            labels=torch.tensor(labels, dtype=torch.int64),
            class_names=tuple(params.classes),
            files=tuple(files),
        )


def _class_files(folder: Path, classes: list[str]) -> list[list[Path]]:
    """Image files of each class folder, sorted; every class folder must exist and hold one."""
    if not folder.is_dir():
        raise DataError(f"imagefolder: {folder} is not a folder", hint="fix `path` in the params, or the data root.")
    extra = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in classes)
    if extra:
        raise DataError(f"imagefolder: {folder} has folders not in `classes`: {extra}",
                        hint="add them to `classes`, or move them out of the tree.")
    out = []
    for c in classes:
        d = folder / c
        found = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS) if d.is_dir() else []
        if not found:
            raise DataError(f"imagefolder: no PNG/JPEG image in {d}", hint="each class needs a folder with images.")
        out.append(found)
    return out


def _split_files(base: Path, split: Split, params: ImageFolderParams) -> tuple[list[Path], list[int]]:
    if not base.is_dir():
        raise DataError(f"imagefolder: {base} is not a folder", hint="fix `path` in the params, or the data root.")
    has_split_folders = (base / "train").is_dir() and (base / "test").is_dir()
    if params.test_share is None:
        if not has_split_folders:
            raise DataError(f"imagefolder: {base} has no train/ and test/ subfolders",
                            hint="add them, or set `test_share` to split the class folders.")
        per_class = _class_files(base / split, params.classes)
    else:
        if has_split_folders:
            raise DataError(f"imagefolder: {base} has train/ and test/ subfolders but `test_share` is set",
                            hint="unset `test_share` to use the subfolders.")
        per_class = []
        for c, found in enumerate(_class_files(base, params.classes)):
            # One generator per class, so adding images to one class leaves the others' split unchanged.
            order = np.random.default_rng([params.split_seed, c]).permutation(len(found))
            n_test = min(max(1, round(len(found) * params.test_share)), len(found) - 1) if len(found) > 1 else 0
            picked = order[:n_test] if split == "test" else order[n_test:]
            per_class.append([found[i] for i in sorted(picked)])
    files = [f for found in per_class for f in found]
    labels = [c for c, found in enumerate(per_class) for _ in found]
    if not files:
        raise DataError(f"imagefolder: the {split} split of {base} is empty", hint="add images, or change `test_share`.")
    return files, labels


def _read(path: Path, params: ImageFolderParams) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if params.channels == 1 else "RGB")
            h, w = params.size
            img = img.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"imagefolder: cannot read {path}: {e}", hint="delete or replace the file.") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy()
