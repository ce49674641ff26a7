"""USPS handwritten digits (16x16 grey) read from the bzip2 libsvm files in torchvision's layout."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pydantic import BaseModel

from jadekit.data.base import DIGITS, DatasetInfo, ImageSet, NoParams, Split
from jadekit.data.files import corrupt_file_error, read_bytes, require_files

_FILES = {"train": "usps.bz2", "test": "usps.t.bz2"}
_SHAPE = (1, 16, 16)
_LINE_START = re.compile(rb"(?m)^[ \t]*(?=\S)")
_BAD_LINE = "each line must hold a label followed by idx:value pairs"
_Parsed = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # labels, rows, index, value


class USPS:
    """USPS from `<root>/USPS/usps.bz2` (train) and `usps.t.bz2` (test).

    Lines read `label idx:value ...` with labels 1-10 (digit = label - 1) and pixel values
    in [-1, 1]; they become grey levels round((v + 1) / 2 * 255).
    """

    Params: ClassVar[type[BaseModel]] = NoParams

    def info(self, params: BaseModel) -> DatasetInfo:
        """Ten digit classes, one 16x16 grey channel."""
        return DatasetInfo(class_names=DIGITS, image_shape=_SHAPE)

    def load(self, root: Path, split: Split, params: BaseModel, download: bool) -> ImageSet:
        """Read one split; download it with torchvision first if allowed and missing.

        Raises:
            DataError: the file is missing (and not downloadable) or corrupt.
        """
        folder = Path(root) / "USPS"

        def fetch(into: Path) -> None:
            from torchvision import datasets  # heavy: only imported to download

            datasets.USPS(str(into / "USPS"), train=split == "train", download=True)

        (path,) = require_files("USPS", split, [(folder / _FILES[split],)], download, fetch, root=Path(root))
        n_pixels = _SHAPE[1] * _SHAPE[2]
        try:
            labels, pixels = parse_libsvm(read_bytes(path), n_pixels)
        except ValueError as e:
            raise corrupt_file_error(path, e) from e
        if not np.isin(labels, np.arange(1, 11)).all():
            raise corrupt_file_error(path, "labels must be integers 1-10")
        grey = np.clip(np.rint((pixels + 1.0) * 127.5), 0, 255).astype(np.uint8)
        return ImageSet(
            images=torch.from_numpy(grey.reshape(-1, *_SHAPE)),
            labels=torch.from_numpy(labels.astype(np.int64) - 1),
            class_names=DIGITS,
            files=(path,),
        )


def parse_libsvm(text: bytes, n_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse libsvm text `label idx:value ...` (1-based indices, absent entries are 0).

    Args:
        text: the whole file, decompressed.
        n_features: number of feature columns.

    Returns:
        Labels (N,) as float64, and features (N, n_features) as float64.

    Raises:
        ValueError: the text is not in this format.
    """
    if not text.strip():
        raise ValueError("the file holds no samples")
    flat = text.replace(b":", b" ")
    labels, rows, index, value = _parse_rectangular(flat) or _parse_ragged(flat)
    if len(index) != text.count(b":"):
        raise ValueError(_BAD_LINE)
    if not ((index >= 1) & (index <= n_features) & (index == np.round(index))).all():
        raise ValueError(f"feature indices must be integers 1-{n_features}")
    if not np.isfinite(value).all():
        raise ValueError("feature values must be finite numbers")
    features = np.zeros((len(labels), n_features))
    features[rows, index.astype(np.intp) - 1] = value
    return labels, features


def _parse_rectangular(flat: bytes) -> _Parsed | None:
    """Fast path for files whose lines all hold the same number of pairs (USPS is dense)."""
    try:
        table = np.loadtxt(io.BytesIO(flat), ndmin=2, comments=None)
    except ValueError:
        return None
    if table.shape[1] % 2 == 0:
        return None
    rows = np.repeat(np.arange(len(table)), table.shape[1] // 2)
    return table[:, 0], rows, table[:, 1::2].ravel(), table[:, 2::2].ravel()


def _parse_ragged(flat: bytes) -> _Parsed:
    """General path: mark each line start with index 0, making the text one run of pairs."""
    marked, n_lines = _LINE_START.subn(b"0 ", flat)
    tokens = marked.split()
    if len(tokens) % 2:
        raise ValueError(_BAD_LINE)
    pairs = np.array(tokens, dtype=np.float64).reshape(-1, 2)
    starts = pairs[:, 0] == 0
    if starts.sum() != n_lines:
        raise ValueError("feature index 0 found; libsvm indices start at 1")
    rows = (np.cumsum(starts) - 1)[~starts]
    return pairs[starts, 1], rows, pairs[~starts, 0], pairs[~starts, 1]
