"""Batch augmentation, vectorised over the batch: random translations (on resident uint8 tensors), rotations and scalings."""

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


def rotate_scale(images: torch.Tensor, degrees: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Rotate each float image clockwise about its centre by degrees[i] and magnify it by factors[i]
    (bilinear, zeros outside); the memory format is kept."""
    angle = torch.deg2rad(degrees.double())
    cos, sin = torch.cos(angle) / factors.double(), torch.sin(angle) / factors.double()
    zero = torch.zeros_like(cos)
    # affine_grid maps each output position to the input position it samples: the inverse transform.
    # It works in coordinates normalised to [-1, 1] per axis: rescale the off-diagonal terms so that a
    # non-square image turns rigidly in pixel space.
    h, w = images.shape[-2:]
    theta = torch.stack([torch.stack([cos, sin * h / w, zero], 1), torch.stack([-sin * w / h, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(images), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last) if images.is_contiguous(
        memory_format=torch.channels_last) else out


def random_rotate_scale(images: torch.Tensor, max_degrees: float, max_scale: float,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """`rotate_scale` with each image's angle uniform in ±max_degrees and factor uniform in 1 ± max_scale;
    both 0 returns the images unchanged.

    Args:
        images: (B, C, H, W) float tensor.
        max_degrees: largest rotation either way, in degrees.
        max_scale: largest relative change of size, e.g. 0.1 for factors in [0.9, 1.1].
        generator: CPU generator drawing the angles and factors (seeded by the caller).
    """
    if max_degrees <= 0 and max_scale <= 0:
        return images
    draws = torch.rand(2, images.shape[0], generator=generator, dtype=torch.float64).mul_(2).sub_(1)  # in [-1, 1]
    return rotate_scale(images, draws[0] * max_degrees, 1 + draws[1] * max_scale)
