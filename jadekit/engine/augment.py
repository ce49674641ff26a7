"""Batch augmentation on resident uint8 tensors: random translations, vectorised over the batch."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Translate each image by its own random offset in [-max_shift, max_shift]^2, filling with zeros.

    Args:
        images: (B, C, H, W) tensor of any dtype.
        max_shift: largest shift in pixels; 0 returns the images unchanged.
        generator: CPU generator drawing the offsets (seeded by the caller for reproducibility).
    """
    if max_shift <= 0:
        return images
    b, _, h, w = images.shape
    offsets = torch.randint(-max_shift, max_shift + 1, (2, b), generator=generator).to(images.device)
    padded = F.pad(images, (max_shift,) * 4)
    rows = torch.arange(h, device=images.device)[None, :] + offsets[0, :, None] + max_shift  # (B, H)
    cols = torch.arange(w, device=images.device)[None, :] + offsets[1, :, None] + max_shift  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None, None]
    channels = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, channels, rows[:, None, :, None], cols[:, None, None, :]]
