"""SVHN house-number digits (32x32 colour) read from the MATLAB files in torchvision's layout."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel

from jadekit.data.base import DIGITS, DatasetInfo, ImageSet, NoParams, Split
from jadekit.data.files import corrupt_file_error, require_files

_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
_SHAPE = (3, 32, 32)


class SVHN:
    """SVHN (cropped digits) from `<root>/SVHN/{train,test}_32x32.mat`.

    Each file holds `X`, uint8 (32, 32, 3, N), and `y`, (N, 1) with 10 standing for digit 0.
    """

    Params: ClassVar[type[BaseModel]] = NoParams

    def info(self, params: BaseModel) -> DatasetInfo:
        """Ten digit classes, three 32x32 colour channels."""
        return DatasetInfo(class_names=DIGITS, image_shape=_SHAPE)

    def load(self, root: Path, split: Split, params: BaseModel, download: bool) -> ImageSet:
        """Read one split; download it with torchvision first if allowed and missing.

        Raises:
            DataError: the file is missing (and not downloadable) or corrupt.
        """
        folder = Path(root) / "SVHN"

        def fetch(into: Path) -> None:
            from torchvision import datasets  # heavy: only imported to download

            datasets.SVHN(str(into / "SVHN"), split=split, download=True)

        (path,) = require_files("SVHN", split, [(folder / _FILES[split],)], download, fetch, root=Path(root))
        x, y = _read_mat(path)
        if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
            raise corrupt_file_error(path, f"X is {x.dtype} {x.shape}, not uint8 (32, 32, 3, N)")
        if y.size != x.shape[3]:
            raise corrupt_file_error(path, f"{y.size} labels in y for {x.shape[3]} images in X")
        if not np.isin(y, np.arange(11)).all():
            raise corrupt_file_error(path, "labels in y must be integers 1-10 (10 = digit 0)")
        labels = y.reshape(-1).astype(np.int64)
        labels[labels == 10] = 0
        images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # H, W, C, N -> N, C, H, W
        return ImageSet(
            images=torch.from_numpy(images),
            labels=torch.from_numpy(labels),
            class_names=DIGITS,
            files=(path,),
        )


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return the `X` and `y` arrays of a MATLAB v5 file, or raise DataError naming it."""
    from scipy.io import loadmat  # heavy: only imported when SVHN is read

    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except Exception as e:  # scipy raises many types (MatReadError, ValueError, ...) for bad files
        raise corrupt_file_error(path, e) from e
    missing = [k for k in ("X", "y") if k not in mat]
    if missing:
        raise corrupt_file_error(path, f"variable(s) {', '.join(missing)} not found")
    return mat["X"], mat["y"]
