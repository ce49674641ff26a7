"""Plain CNN backbones: the paper's SVHN and MNIST networks as presets of one builder."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from jadekit.engine.layers import UpsampleConv2d
from jadekit.errors import DataError


class CNNParams(BaseModel):
    """Conv 3x3 stages (each + ReLU, optionally + 2x max-pool), then a linear layer."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # 8.0 or "8" is an error, as in recipes

    filters: list[int] = Field(min_length=1, description="Filters of each 3x3 conv stage.")
    pool: list[bool] = Field(min_length=1, description="Whether a 2x max-pool follows each stage.")

    @model_validator(mode="after")
    def _same_length(self) -> CNNParams:
        if len(self.filters) != len(self.pool):
            raise ValueError("filters and pool must have one entry per stage")
        if any(f <= 0 for f in self.filters):
            raise ValueError("filters must be positive")
        return self


def _stage_sizes(in_shape: tuple[int, int, int], pool: list[bool]) -> list[tuple[int, int]]:
    """Spatial size before each stage and after the last (floor pooling, as PyTorch)."""
    _, h, w = in_shape
    sizes = [(h, w)]
    for p in pool:
        if p:
            h, w = h // 2, w // 2
        sizes.append((h, w))
    if h < 1 or w < 1:
        raise DataError(
            f"images of shape {in_shape} are too small for {sum(pool)} 2x poolings",
            hint="use larger images (the data table's `resize`) or a backbone with fewer poolings.",
        )
    return sizes


def _read_v01_image_layer(decoder: nn.Sequential, state_dict: dict, prefix: str, *_) -> None:
    """Load checkpoints of jadekit 0.1, whose decoders kept the image layer as Upsample + Conv2d.

    The weights are the same; 0.1 stored them one index later than the `UpsampleConv2d` (the last layer).
    """
    last = len(decoder) - 1
    for name in ("weight", "bias"):
        old, new = f"{prefix}{last + 1}.{name}", f"{prefix}{last}.{name}"
        if old in state_dict and new not in state_dict:
            state_dict[new] = state_dict.pop(old)


class CNN:
    """General conv backbone; the decoder mirrors the encoder with upsampling in place of pooling.

    Two equivalent forms make it faster without changing the function or the parameters: a
    stage's max-pool runs before its ReLU (they commute, and the ReLU then sees 4x fewer
    values), and an output layer after an exact 2x upsampling is one `UpsampleConv2d`.
    """

    Params: ClassVar[type[BaseModel]] = CNNParams
    preset: CNNParams | None = None

    def _params(self, params: BaseModel) -> CNNParams:
        if self.preset is not None:
            return self.preset
        return params if isinstance(params, CNNParams) else CNNParams.model_validate(params.model_dump())

    def encoder(self, in_shape: tuple[int, int, int], out_dim: int, params: BaseModel) -> nn.Module:
        p = self._params(params)
        sizes = _stage_sizes(in_shape, p.pool)
        layers: list[nn.Module] = []
        channels = in_shape[0]
        for f, pool in zip(p.filters, p.pool, strict=True):
            layers.append(nn.Conv2d(channels, f, 3, padding=1))
            layers += [nn.MaxPool2d(2), nn.ReLU(inplace=True)] if pool else [nn.ReLU(inplace=True)]  # = conv, ReLU, pool
            channels = f
        h, w = sizes[-1]
        layers += [nn.Flatten(), nn.Linear(channels * h * w, out_dim)]
        return nn.Sequential(*layers)

    def decoder(self, latent_dim: int, out_shape: tuple[int, int, int], params: BaseModel) -> nn.Module:
        p = self._params(params)
        sizes = _stage_sizes(out_shape, p.pool)
        h, w = sizes[-1]
        layers: list[nn.Module] = [
            nn.Linear(latent_dim, p.filters[-1] * h * w),
            nn.ReLU(inplace=True),
            nn.Unflatten(1, (p.filters[-1], h, w)),
        ]
        targets = [out_shape[0], *p.filters[:-1]]  # channels before each encoder stage
        fuse_image_layer = p.pool[0] and sizes[0] == (2 * sizes[1][0], 2 * sizes[1][1])  # an exact 2x upsampling
        for i in reversed(range(len(p.filters))):
            if i == 0 and fuse_image_layer:
                layers.append(UpsampleConv2d(p.filters[0], targets[0]))
                continue
            if p.pool[i]:
                layers.append(nn.Upsample(size=sizes[i], mode="nearest"))
            layers.append(nn.Conv2d(p.filters[i], targets[i], 3, padding=1))
            if i > 0:
                layers.append(nn.ReLU(inplace=True))
        decoder = nn.Sequential(*layers)
        if fuse_image_layer:
            decoder.register_load_state_dict_pre_hook(_read_v01_image_layer)
        return decoder


class _Preset(CNN):
    """A fixed CNN from the paper (§3); takes no parameters."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)


class PaperSVHN(_Preset):
    """4 conv 3x3 (64, 96, 64, 8) + ReLU, 2x max-pool after the first three."""

    preset = CNNParams(filters=[64, 96, 64, 8], pool=[True, True, True, False])


class PaperMNIST(_Preset):
    """3 conv 3x3 (32, 32, 16) + ReLU + 2x max-pool each."""

    preset = CNNParams(filters=[32, 32, 16], pool=[True, True, True])
