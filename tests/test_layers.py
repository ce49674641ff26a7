"""The faster layer forms compute what the standard layers compute."""

from __future__ import annotations

import pytest
import torch

from jadekit.engine.layers import Dropout, UpsampleConv2d, literal_form
from jadekit.engine.models import Classifier


@pytest.mark.parametrize(("cin", "cout", "hw"), [(32, 1, (14, 14)), (5, 3, (4, 7)), (3, 6, (1, 1))])
def test_upsample_conv_equals_upsample_then_conv(cin, cout, hw):
    """Same outputs and gradients as nn.Upsample(2x nearest) + nn.Conv2d with the same weights, any format."""
    torch.manual_seed(0)
    fused = UpsampleConv2d(cin, cout)
    plain = torch.nn.Conv2d(cin, cout, 3, padding=1)
    plain.load_state_dict(fused.state_dict())  # the same keys and shapes as a Conv2d
    x = torch.randn(3, cin, *hw).contiguous(memory_format=torch.channels_last).requires_grad_()
    ref = plain(torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest"))
    out = fused(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, [x, *fused.parameters()], g),
                    torch.autograd.grad(ref, [x, *plain.parameters()], g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_dropout_keeps_the_distribution_of_nn_dropout():
    torch.manual_seed(0)
    drop, x = Dropout(0.3), torch.ones(400, 500)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.005  # 200,000 draws: std 0.001
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / 0.7))  # inverted scaling, as nn.Dropout
    torch.manual_seed(1)
    a = drop(x)
    torch.manual_seed(1)
    assert torch.equal(a, drop(x))  # seeded by the global generator
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_dropout_edge_rates(p):
    x = torch.randn(8, 5)
    torch.testing.assert_close(Dropout(p)(x), torch.nn.Dropout(p)(x))


def test_literal_form_swaps_in_nn_dropout_with_the_same_weights():
    clf = Classifier(10, [16, 16], 4, 0.5)
    literal = literal_form(clf)
    assert [type(m) for m in literal.net if "Dropout" in type(m).__name__] == [torch.nn.Dropout] * 2
    x = torch.randn(3, 10)
    torch.testing.assert_close(clf.eval()(x), literal.eval()(x))
