"""Shared fixtures: tiny class-per-folder trees of PNG and JPEG files written with PIL."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["cat", "dog"]


def _write(folder: Path, n: int, seed: int) -> None:
    """n images per class, of mixed size, mode and format."""
    rng = np.random.default_rng(seed)
    for c in CLASSES:
        (folder / c).mkdir(parents=True)
        for i in range(n):
            h, w = int(rng.integers(5, 40)), int(rng.integers(5, 40))
            if i % 2:
                Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8), "L").save(folder / c / f"{i}.png")
            else:
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB").save(folder / c / f"{i}.JPG")


@pytest.fixture
def write_tree():
    """`write_tree(folder, n, seed)`: n images per class of mixed size, mode and format."""
    return _write
