"""Shared fixtures: tiny, learnable datasets written in the real file formats, and a tiny recipe."""

from __future__ import annotations

import bz2
import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import tomli_w

MNIST_PREFIX = {"train": "train", "test": "t10k"}
TINY_COUNTS = {"usps": {"train": 20, "test": 10}, "mnist": {"train": 40, "test": 20}}  # samples per class


def class_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Dark noise with a bright horizontal bar whose row depends on the class: easy to learn."""
    images = rng.integers(0, 60, (len(labels), size, size)).astype(np.uint8)
    band = max(1, size // 10)
    for i, label in enumerate(labels):
        top = int(label) * (size - band) // 9
        images[i, top : top + band, :] = rng.integers(200, 256, (band, size))
    return images


def write_idx(path: Path, array: np.ndarray) -> None:
    """Gzip-compressed unsigned-byte IDX file (magic 0x0000080<ndim>, big-endian dims)."""
    data = struct.pack(f">I{array.ndim}I", 0x0800 | array.ndim, *array.shape) + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))


def write_tiny_mnist(root: Path, split: str, per_class: int, rng: np.random.Generator) -> None:
    labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
    rng.shuffle(labels)
    raw = root / "MNIST" / "raw"
    write_idx(raw / f"{MNIST_PREFIX[split]}-images-idx3-ubyte", class_images(labels, 28, rng))
    write_idx(raw / f"{MNIST_PREFIX[split]}-labels-idx1-ubyte", labels)


def write_tiny_usps(root: Path, split: str, per_class: int, rng: np.random.Generator) -> None:
    """libsvm lines `label 1:v ... 256:v`, labels 1-10 (digit + 1), values grey / 255 * 2 - 1."""
    digits = np.repeat(np.arange(10), per_class)
    rng.shuffle(digits)
    grey = class_images(digits, 16, rng).reshape(len(digits), -1)
    lines = [" ".join([str(d + 1), *(f"{i + 1}:{v / 255 * 2 - 1:.6f}" for i, v in enumerate(row))])
             for d, row in zip(digits, grey, strict=True)]
    path = root / "USPS" / ("usps.bz2" if split == "train" else "usps.t.bz2")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))


@pytest.fixture(scope="session")
def tiny_data_root(tmp_path_factory) -> Path:
    """A data root holding tiny USPS (libsvm .bz2) and MNIST (IDX .gz) train and test splits."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        write_tiny_usps(root, split, TINY_COUNTS["usps"][split], rng)
        write_tiny_mnist(root, split, TINY_COUNTS["mnist"][split], rng)
    return root


def tiny_recipe_dict(data_root: Path, output_dir: Path) -> dict:
    """USPS (5 labels per class) as primary, tiny MNIST as auxiliary, every method, one seed, CPU."""
    return {
        "experiment": {"name": "tiny", "methods": ["single", "paired", "jade"], "seeds": [0], "output_dir": str(output_dir)},
        "primary": {"dataset": "usps", "root": str(data_root), "download": False, "labels_per_class": 5, "val_share": 0.2},
        "auxiliary": {"dataset": "mnist", "root": str(data_root), "download": False, "limit": 200},
        "model": {
            "primary_backbone": {"name": "paper-mnist"},
            "auxiliary_backbone": {"name": "paper-mnist"},
            "classifier_hidden": [64],
            "dropout": 0.1,
        },
        "train": {"steps": 30, "batch_size": 20, "eval_every": 10, "device": "cpu", "threads": 1},
    }


@pytest.fixture
def tiny_recipe(write_tiny_recipe, tmp_path) -> Path:
    """A tiny recipe file over `tiny_data_root`, writing runs under `tmp_path / "runs"`."""
    return write_tiny_recipe(tmp_path / "tiny.toml", tmp_path / "runs")


@pytest.fixture(scope="session")
def write_tiny_recipe(tiny_data_root):
    """Factory: write the tiny recipe (with `changes` merged into its tables) to `path`; returns `path`."""

    def write(path: Path, output_dir: Path, **changes: dict) -> Path:
        data = tiny_recipe_dict(tiny_data_root, output_dir)
        for table, values in changes.items():
            data[table] = {**data[table], **values}
        path.write_text(tomli_w.dumps(data))
        return path

    return write
