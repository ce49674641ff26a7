"""The `mri-cnn64` backbone: for 1-channel 64x64 slices (any C, and H, W divisible by 8)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from jadekit.errors import DataError


class MRICNNParams(BaseModel):
    """The recipe's backbone `params` table for `mri-cnn64`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(16, ge=1, description="Channels of the first stage; doubled at each of the three stages.")
    groups: int = Field(4, ge=1, description="GroupNorm groups (batch-size independent, unlike BatchNorm).")


class MRICNN64:
    """Three stages of (conv 3x3, GroupNorm, SiLU) halving the size with stride 2: 64 -> 8."""

    Params: ClassVar[type[BaseModel]] = MRICNNParams

    def encoder(self, in_shape: tuple[int, int, int], out_dim: int, params: MRICNNParams) -> nn.Module:
        c, h, w = _check(in_shape)
        k = [params.width * 2**i for i in range(3)]
        layers: list[nn.Module] = []
        for cin, cout in zip([c, *k[:-1]], k, strict=True):
            layers += [nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.GroupNorm(min(params.groups, cout), cout), nn.SiLU()]
        layers += [nn.Flatten(), nn.Linear(k[-1] * (h // 8) * (w // 8), out_dim)]
        return nn.Sequential(*layers)

    def decoder(self, latent_dim: int, out_shape: tuple[int, int, int], params: MRICNNParams) -> nn.Module:
        c, h, w = _check(out_shape)
        k = [params.width * 2**i for i in range(3)]
        layers: list[nn.Module] = [nn.Linear(latent_dim, k[-1] * (h // 8) * (w // 8)), nn.SiLU(),
                                   nn.Unflatten(1, (k[-1], h // 8, w // 8))]
        for cin, cout in zip(k[::-1], [*k[::-1][1:], k[0]], strict=True):
            layers += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.GroupNorm(min(params.groups, cout), cout), nn.SiLU()]
        layers.append(nn.Conv2d(k[0], c, 3, padding=1))
        return nn.Sequential(*layers)


def _check(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    c, h, w = shape
    if h % 8 or w % 8 or h < 8 or w < 8:
        raise DataError(f"mri-cnn64 needs image sides divisible by 8 (e.g. 64x64), got {h}x{w}",
                        hint="set the dataset's `size` (or the data table's `resize`) to a multiple of 8.")
    return c, h, w
