"""Any timm model as the encoder, with a generic upsampling decoder."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from jadekit.errors import PluginError, first_line


class TimmParams(BaseModel):
    """Parameters of the `timm` backbone."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # 8.0 or "8" is an error, as in recipes

    model_name: str = Field("resnet18", description="Any name `timm.list_models()` knows.")
    pretrained: bool = Field(False, description="Load timm's pretrained weights (needs internet or a cache).")
    decoder_channels: list[PositiveInt] = Field([128, 64, 32], min_length=1, description="Channels of each 2x upsampling stage.")


class _Encoder(nn.Module):
    """timm trunk (pooled features, any input channels) + linear head to `out_dim`."""

    def __init__(self, trunk: nn.Module, out_dim: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = nn.Linear(trunk.num_features, out_dim)  # timm's pooled feature width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x).flatten(1))


class Timm:
    """Encoder from timm (pooled features); decoder: linear → upsample + conv stages → exact size."""

    Params: ClassVar[type[BaseModel]] = TimmParams

    def encoder(self, in_shape: tuple[int, int, int], out_dim: int, params: BaseModel) -> nn.Module:
        import timm  # imported only when a recipe names this backbone

        p = TimmParams.model_validate(params.model_dump())
        if ":" not in p.model_name and not timm.is_model(p.model_name):  # `hf-hub:...` / `local-dir:...` names load by path
            raise PluginError(f"timm has no model '{p.model_name}'",
                              hint="pick a name from `timm.list_models()` (e.g. `timm.list_models('resnet*')`).")
        try:
            trunk = timm.create_model(p.model_name, pretrained=p.pretrained, num_classes=0, in_chans=in_shape[0])
        except Exception as e:
            if p.pretrained:  # a known name: most often the weights could not be fetched (offline)
                raise PluginError(f"timm cannot build '{p.model_name}' with pretrained weights: {first_line(e)}",
                                  hint="if offline, connect to the internet once (timm caches the weights under "
                                       "~/.cache/huggingface) or set pretrained = false; else check its params.") from None
            raise PluginError(f"timm cannot build '{p.model_name}': {first_line(e)}",
                              hint="check its params (model_name, decoder_channels) and the image shape.") from None
        return _Encoder(trunk, out_dim)

    def decoder(self, latent_dim: int, out_shape: tuple[int, int, int], params: BaseModel) -> nn.Module:
        p = TimmParams.model_validate(params.model_dump())
        c, h, w = out_shape
        scale = 2 ** len(p.decoder_channels)
        h0, w0 = max(1, math.ceil(h / scale)), max(1, math.ceil(w / scale))
        first = p.decoder_channels[0]
        layers: list[nn.Module] = [nn.Linear(latent_dim, first * h0 * w0), nn.ReLU(inplace=True), nn.Unflatten(1, (first, h0, w0))]
        channels = first
        for width in p.decoder_channels:
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        layers += [nn.Upsample(size=(h, w), mode="bilinear", align_corners=False), nn.Conv2d(channels, c, 3, padding=1)]
        return nn.Sequential(*layers)
