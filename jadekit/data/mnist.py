"""MNIST handwritten digits (28x28 grey) read from the IDX files in torchvision's layout."""

from __future__ import annotations

import math
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel

from jadekit.data.base import DIGITS, DatasetInfo, ImageSet, NoParams, Split
from jadekit.data.files import corrupt_file_error, read_bytes, require_files

_PREFIX = {"train": "train", "test": "t10k"}
_SHAPE = (1, 28, 28)


class MNIST:
    """MNIST from `<root>/MNIST/raw/`, each IDX file either raw or gzip-compressed (.gz)."""

    Params: ClassVar[type[BaseModel]] = NoParams

    def info(self, params: BaseModel) -> DatasetInfo:
        """Ten digit classes, one 28x28 grey channel."""
        return DatasetInfo(class_names=DIGITS, image_shape=_SHAPE)

    def load(self, root: Path, split: Split, params: BaseModel, download: bool) -> ImageSet:
        """Read one split; download it with torchvision first if allowed and missing.

        Raises:
            DataError: files missing (and not downloadable) or corrupt.
        """
        raw = Path(root) / "MNIST" / "raw"
        names = [f"{_PREFIX[split]}-images-idx3-ubyte", f"{_PREFIX[split]}-labels-idx1-ubyte"]
        # The uncompressed form is what torchvision extracts to; read it when both exist.
        wanted = [(raw / n, raw / f"{n}.gz") for n in names]

        def fetch(into: Path) -> None:
            from torchvision import datasets  # heavy: only imported to download

            datasets.MNIST(str(into), train=split == "train", download=True)

        image_file, label_file = require_files("MNIST", split, wanted, download, fetch, root=Path(root))
        images = read_idx(image_file, ndim=3)
        labels = read_idx(label_file, ndim=1)
        if images.shape[1:] != _SHAPE[1:]:
            raise corrupt_file_error(image_file, f"images are {images.shape[1:]}, not 28x28")
        if len(labels) != len(images):
            raise corrupt_file_error(label_file, f"{len(labels)} labels for {len(images)} images in {image_file.name}")
        if len(labels) and labels.max() > 9:
            raise corrupt_file_error(label_file, f"label {labels.max()} is not a digit 0-9")
        return ImageSet(
            images=torch.from_numpy(images).unsqueeze(1),
            labels=torch.from_numpy(labels.astype(np.int64)),
            class_names=DIGITS,
            files=(image_file, label_file),
        )


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file (magic 0x0000080<ndim>) into an array of its dims.

    Raises:
        DataError: the file is not such an IDX file or its size disagrees with its header.
    """
    data = read_bytes(path)
    header = 4 + 4 * ndim
    magic = 0x0800 | ndim
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise corrupt_file_error(path, f"not an IDX file with magic number {magic:#010x}")
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    if len(data) != header + math.prod(dims):
        raise corrupt_file_error(
            path,
            f"header announces shape {dims} ({math.prod(dims)} bytes), file holds {len(data) - header} bytes after it",
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()
