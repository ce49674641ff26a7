"""Encoders and decoders of every built-in backbone over several image shapes, and exact parameter counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from jadekit import registry
from jadekit.backbones.base import Backbone
from jadekit.backbones.cnn import CNN, CNNParams, PaperMNIST, PaperSVHN
from jadekit.backbones.timm_backbone import Timm, TimmParams
from jadekit.cli import app
from jadekit.engine.layers import UpsampleConv2d, literal_form
from jadekit.errors import DataError, PluginError

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SHAPES = [(3, 32, 32), (1, 28, 28), (1, 16, 16), (3, 17, 23), (2, 9, 30)]
CNN_PARAMS = CNNParams(filters=[8, 4], pool=[True, False])
TIMM_PARAMS = TimmParams(model_name="test_efficientnet", decoder_channels=[8, 4])


def backbones() -> list[tuple[str, Backbone, object]]:
    return [
        ("paper-svhn", PaperSVHN(), PaperSVHN.Params()),
        ("paper-mnist", PaperMNIST(), PaperMNIST.Params()),
        ("cnn", CNN(), CNN_PARAMS),
    ]


def test_builtins_are_registered_under_their_names():
    for name, bb, _ in backbones():
        assert type(registry.backbones.load(name)) is type(bb)
    assert type(registry.backbones.load("timm")) is Timm


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(("name", "bb", "params"), backbones(), ids=lambda v: v if isinstance(v, str) else "")
def test_cnn_encoder_decoder_shapes(name, bb, params, shape):
    assert isinstance(bb, Backbone)
    enc, dec = bb.encoder(shape, 12, params), bb.decoder(7, shape, params)
    x = torch.rand(2, *shape)
    assert enc(x).shape == (2, 12)
    assert dec(torch.randn(2, 7)).shape == (2, *shape)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize(("name", "bb", "params"), backbones(), ids=lambda v: v if isinstance(v, str) else "")
def test_cnn_fast_forms_equal_the_papers_layer_order(name, bb, params, shape):
    """Pool before ReLU and the fused image layer compute what conv, ReLU, pool / upsample, conv compute."""
    torch.manual_seed(0)
    enc, dec = bb.encoder(shape, 12, params), bb.decoder(7, shape, params)
    x, z = torch.rand(4, *shape), torch.randn(4, 7)
    for fast, inp in ((enc, x), (dec, z)):
        literal = literal_form(fast)
        order = [type(m).__name__ for m in literal]
        assert "UpsampleConv2d" not in order and all(
            order[i + 1] != "ReLU" for i, n in enumerate(order[:-1]) if n == "MaxPool2d")
        torch.testing.assert_close(fast(inp), literal(inp), rtol=1e-5, atol=1e-5)
    fused_output = isinstance(list(dec)[-1], UpsampleConv2d)
    assert fused_output == (shape[1] % 2 == 0 and shape[2] % 2 == 0 and bb._params(params).pool[0])


@pytest.mark.parametrize(("name", "bb", "params"), backbones(), ids=lambda v: v if isinstance(v, str) else "")
def test_cnn_decoder_loads_a_jadekit_0_1_checkpoint(name, bb, params):
    """0.1 stored the image layer as upsample + conv (the literal order): its weights load and give the same images."""
    torch.manual_seed(0)
    shape = (1, 28, 28)
    trained = bb.decoder(7, shape, params)
    v01 = torch.nn.ModuleDict({"decoder": literal_form(trained)})  # nested: the keys carry a prefix, as in a model
    assert any(k.startswith(f"decoder.{len(trained)}.") for k in v01.state_dict())  # one index past the fused layer
    fresh = torch.nn.ModuleDict({"decoder": bb.decoder(7, shape, params)})
    fresh.load_state_dict(v01.state_dict())  # strict: every key is used
    z = torch.randn(3, 7)
    torch.testing.assert_close(fresh["decoder"](z), trained(z), rtol=1e-5, atol=1e-5)
    fresh.load_state_dict(fresh.state_dict())  # the current layout still loads


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 13, 19)], ids=lambda s: "x".join(map(str, s)))
def test_timm_encoder_decoder_shapes(shape):
    bb = Timm()
    enc, dec = bb.encoder(shape, 6, TIMM_PARAMS), bb.decoder(5, shape, TIMM_PARAMS)
    assert enc(torch.rand(2, *shape)).shape == (2, 6)
    assert dec(torch.randn(2, 5)).shape == (2, *shape)


def test_timm_unknown_model_is_a_plugin_error():
    with pytest.raises(PluginError, match="no-such-net") as e:
        Timm().encoder((1, 16, 16), 4, TimmParams(model_name="no-such-net"))
    assert "timm.list_models()" in e.value.hint


def test_timm_pretrained_weights_that_cannot_be_fetched_say_so(monkeypatch):
    import timm

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PluginError, match="cannot build 'resnet18' with pretrained weights") as e:
        Timm().encoder((1, 16, 16), 4, TimmParams(model_name="resnet18", pretrained=True))
    assert "pretrained = false" in e.value.hint and "list_models" not in e.value.hint


def test_paper_svhn_layers_as_in_the_paper():
    enc = PaperSVHN().encoder((3, 32, 32), 10, PaperSVHN.Params())
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 96, 64, 8]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) and c.bias is not None for c in convs)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in enc.modules()) == 3
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in enc.modules())


@pytest.mark.parametrize(("bb", "shape", "expected"), [
    # 1·64·9+64 + 64·96·9+96 + 96·64·9+64 + 64·8·9+8, then linear 8·4·4 → 10
    (PaperSVHN(), (3, 32, 32), 1792 + 55392 + 55360 + 4616 + (128 * 10 + 10)),
    # 32·9+32 + 32·32·9+32 + 32·16·9+16, then 28 → 14 → 7 → 3 (floor): linear 16·3·3 → 10
    (PaperMNIST(), (1, 28, 28), 320 + 9248 + 4624 + (144 * 10 + 10)),
])
def test_paper_encoder_parameter_counts(bb, shape, expected):
    enc = bb.encoder(shape, 10, bb.Params())
    assert sum(p.numel() for p in enc.parameters()) == expected


@pytest.mark.parametrize(("bb", "params", "shape"), [
    (PaperSVHN(), PaperSVHN.Params(), (3, 4, 32)),
    (PaperMNIST(), PaperMNIST.Params(), (1, 7, 7)),
    (CNN(), CNNParams(filters=[4, 4, 4], pool=[True, True, True]), (1, 6, 100)),
])
def test_too_small_images_are_a_data_error(bb, params, shape):
    with pytest.raises(DataError, match="too small"):
        bb.encoder(shape, 10, params)
    with pytest.raises(DataError, match="too small"):
        bb.decoder(10, shape, params)


def test_cnn_params_validated():
    with pytest.raises(ValueError, match="one entry per stage"):
        CNNParams(filters=[4, 4], pool=[True])
    with pytest.raises(ValueError, match="positive"):
        CNNParams(filters=[4, 0], pool=[True, True])


def test_describe_svhn_mnist_exact_parameter_counts():
    res = CliRunner().invoke(app, ["describe", str(RECIPES / "svhn_mnist.toml"), "--json"])
    assert res.exit_code == 0, res.output
    counts = json.loads(res.stdout)
    assert counts["single"]["total"] == 629_960
    assert counts["paired"]["total"] == 645_602
    assert set(counts["single"]) == {"primary_encoder", "classifier", "total"}
    assert set(counts["paired"]) == {"primary_encoder", "auxiliary_encoder", "classifier", "total"}
    assert set(counts["jade"]) == {"primary_encoder", "auxiliary_encoder", "primary_decoder", "auxiliary_decoder",
                                   "classifier", "total"}
    assert counts["single"]["classifier"] == counts["paired"]["classifier"] == counts["jade"]["classifier"] == 511_510
    for m in counts.values():
        assert m["total"] == sum(v for k, v in m.items() if k != "total")
