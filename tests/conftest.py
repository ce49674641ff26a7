"""Shared fixtures: tiny, learnable datasets written in the real file formats, and a tiny recipe."""

from __future__ import annotations

import bz2
import gzip
import struct
from pathlib import Path
from types import SimpleNamespace

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


def write_mnist(root: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """One MNIST split as torchvision keeps it: `<root>/MNIST/raw/<prefix>-{images-idx3,labels-idx1}-ubyte.gz`."""
    raw = root / "MNIST" / "raw"
    write_idx(raw / f"{MNIST_PREFIX[split]}-images-idx3-ubyte", images)
    write_idx(raw / f"{MNIST_PREFIX[split]}-labels-idx1-ubyte", labels)


def write_usps(root: Path, split: str, digits: np.ndarray, values: np.ndarray, decimals: int = 6) -> None:
    """One USPS split as libsvm lines `label 1:v ... 256:v` (bz2): labels 1-10 (digit + 1), `values` rows in [-1, 1]."""
    lines = [" ".join([str(d + 1), *(f"{i + 1}:{v:.{decimals}f}" for i, v in enumerate(row))])
             for d, row in zip(digits, values, strict=True)]
    path = root / "USPS" / ("usps.bz2" if split == "train" else "usps.t.bz2")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))


def grey_to_usps(grey: np.ndarray) -> np.ndarray:
    """Grey levels 0-255, one row per image, as USPS pixel values in [-1, 1]."""
    return grey.reshape(len(grey), -1) / 255 * 2 - 1


def write_tiny_mnist(root: Path, split: str, per_class: int, rng: np.random.Generator) -> None:
    labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
    rng.shuffle(labels)
    write_mnist(root, split, class_images(labels, 28, rng), labels)


def write_tiny_usps(root: Path, split: str, per_class: int, rng: np.random.Generator) -> None:
    digits = np.repeat(np.arange(10), per_class)
    rng.shuffle(digits)
    write_usps(root, split, digits, grey_to_usps(class_images(digits, 16, rng)))


def bar_digits(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Learnable toy digits, classes in turn: a bright bar whose row depends on the class, plus noise."""
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, (n, size, size))
    for i, c in enumerate(labels):
        row = int(c * (size - 2) / 9)
        images[i, row : row + 2, :] = 255
    return images.astype(np.uint8), labels


def write_bar_data(root: Path) -> Path:
    """300 MNIST + 60 test and 80 USPS + 40 test `bar_digits`."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("test", 60)):
        write_mnist(root, split, *bar_digits(n, 28, rng))
    for split, n in (("train", 80), ("test", 40)):
        x, y = bar_digits(n, 16, rng)
        write_usps(root, split, y, grey_to_usps(x))
    return root


@pytest.fixture
def fake_datasets(monkeypatch):
    """Register dataset adapters for one test: `fake_datasets(photos=Photos())` (a name may shadow a real one)."""
    from jadekit import registry

    fakes: dict[str, object] = {}
    real_load = registry.datasets.load
    monkeypatch.setattr(registry.datasets, "load", lambda name: fakes[name] if name in fakes else real_load(name))
    return fakes.update


@pytest.fixture(scope="session")
def digit_writers() -> SimpleNamespace:
    """The writers of MNIST (`mnist(root, split, images, labels)`) and USPS (`usps(root, split, digits, values)`,
    `grey_to_usps(grey)`) files, for tests that need data of their own."""
    return SimpleNamespace(mnist=write_mnist, usps=write_usps, grey_to_usps=grey_to_usps)


@pytest.fixture(scope="session")
def bar_data_root(tmp_path_factory) -> Path:
    """A data root holding `write_bar_data` (the data of the eval and report tests' runs)."""
    return write_bar_data(tmp_path_factory.mktemp("bar-data"))


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
    """Factory: write the tiny recipe to `path`, over `data_root` (default `tiny_data_root`), with `changes` merged
    into its tables (a value of None drops that key); returns `path`."""

    def write(path: Path, output_dir: Path | str, data_root: Path | None = None, **changes: dict) -> Path:
        data = tiny_recipe_dict(data_root or tiny_data_root, output_dir)
        for table, values in changes.items():
            data[table] = {k: v for k, v in {**data[table], **values}.items() if v is not None}
        path.write_text(tomli_w.dumps(data))
        return path

    return write


@pytest.fixture(scope="session")
def write_bar_recipe(write_tiny_recipe, bar_data_root):
    """Factory: the tiny recipe over `bar_data_root`, with a smaller model and 10 steps (the eval and report tests' runs)."""

    def write(path: Path, output_dir: Path) -> Path:
        return write_tiny_recipe(path, output_dir, bar_data_root, model={"classifier_hidden": [32], "dropout": None},
                                 train={"steps": 10, "batch_size": 16, "eval_every": 5, "threads": None})

    return write
