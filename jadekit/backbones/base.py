"""The backbone contract: an encoder and a mirrored decoder for a given image shape."""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

from pydantic import BaseModel
from torch import nn


@runtime_checkable
class Backbone(Protocol):
    """An encoder/decoder family, registered under the `jadekit.backbones` entry-point group.

    `Params` is the pydantic model of the recipe's backbone parameter table; the backbone
    owns it. Both factories must work for any `(C, H, W)` the backbone accepts and raise
    `jadekit.errors.DataError` for shapes it cannot handle.
    """

    Params: ClassVar[type[BaseModel]]

    def encoder(self, in_shape: tuple[int, int, int], out_dim: int, params: BaseModel) -> nn.Module:
        """Module mapping float images (B, C, H, W) in [0, 1] to (B, out_dim)."""
        ...

    def decoder(self, latent_dim: int, out_shape: tuple[int, int, int], params: BaseModel) -> nn.Module:
        """Module mapping latents (B, latent_dim) to image logits/means (B, C, H, W)."""
        ...
