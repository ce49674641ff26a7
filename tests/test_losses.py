"""Each loss term of jadekit.engine.losses against a closed form computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jadekit.engine import losses
from jadekit.engine.models import Batch, Classifier, Jade, LossWeights, PairedClassifier, SingleClassifier


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def kl_1d(mu1: float, s1: float, mu2: float, s2: float) -> float:
    """KL(N(mu1, s1²) || N(mu2, s2²)) in one dimension."""
    return math.log(s2 / s1) + (s1**2 + (mu1 - mu2) ** 2) / (2 * s2**2) - 0.5


# --- Gaussian KLs ----------------------------------------------------------------------------


def test_kl_of_identical_gaussians_is_zero():
    mu, logvar = torch.randn(4, 7, dtype=torch.float64), torch.randn(4, 7, dtype=torch.float64)
    assert torch.allclose(losses.kl_gaussians(mu, logvar, mu, logvar), torch.zeros(4, dtype=torch.float64))


def test_kl_gaussians_known_values():
    # dim 1: N(1, 2²) || N(0, 1) = log(1/2) + (4 + 1) / 2 - 1/2; dim 2: N(0, 1) || N(2, 3²) = log 3 + 5/18 - 1/2
    expected = (math.log(0.5) + 2.0) + (math.log(3.0) + 5 / 18 - 0.5)
    assert expected == pytest.approx(kl_1d(1, 2, 0, 1) + kl_1d(0, 1, 2, 3))
    got = losses.kl_gaussians(t(1.0, 0.0), t(math.log(4.0), 0.0), t(0.0, 2.0), t(0.0, math.log(9.0)))
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_kl_gaussians_is_asymmetric_and_broadcasts():
    a = losses.kl_gaussians(t(1.0), t(math.log(4.0)), t(0.0), t(0.0))
    b = losses.kl_gaussians(t(0.0), t(0.0), t(1.0), t(math.log(4.0)))
    assert a.item() == pytest.approx(kl_1d(1, 2, 0, 1)) and b.item() == pytest.approx(kl_1d(0, 1, 1, 2))
    grid = losses.kl_gaussians(torch.zeros(3, 1, 2), torch.zeros(3, 1, 2), torch.zeros(1, 5, 2), torch.zeros(1, 5, 2))
    assert grid.shape == (3, 5)


def test_kl_standard_normal():
    mu = t(0.0, 1.0, -2.0)[None]
    logvar = t(0.0, math.log(4.0), math.log(0.25))[None]
    expected = kl_1d(0, 1, 0, 1) + kl_1d(1, 2, 0, 1) + kl_1d(-2, 0.5, 0, 1)
    assert losses.kl_standard_normal(mu, logvar).item() == pytest.approx(expected, rel=1e-12)
    assert losses.kl_standard_normal(torch.zeros(3, 4), torch.zeros(3, 4)).tolist() == [0.0, 0.0, 0.0]
    # equals the general KL with a standard normal as second argument
    mu2, lv2 = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(losses.kl_standard_normal(mu2, lv2), losses.kl_gaussians(mu2, lv2, torch.zeros(3), torch.zeros(3)))


# --- reconstruction --------------------------------------------------------------------------


def test_bernoulli_nll_is_summed_bce_of_logits():
    logits = t(0.0, 2.0, -1.0, 3.0).reshape(1, 1, 2, 2)
    target = t(1.0, 0.0, 0.5, 1.0).reshape(1, 1, 2, 2)

    def bce(logit: float, x: float) -> float:
        p = 1 / (1 + math.exp(-logit))
        return -(x * math.log(p) + (1 - x) * math.log(1 - p))

    expected = sum(bce(lo, x) for lo, x in zip([0.0, 2.0, -1.0, 3.0], [1.0, 0.0, 0.5, 1.0], strict=True))
    got = losses.reconstruction_nll(logits, target, "bernoulli")
    assert got.shape == (1,)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_gaussian_nll_formula():
    mean = t(0.2, 0.9, 0.5).reshape(1, 3)
    target = t(0.0, 1.0, 0.5).reshape(1, 3)
    expected = sum(0.5 * (m - x) ** 2 + 0.5 * math.log(2 * math.pi) for m, x in [(0.2, 0.0), (0.9, 1.0), (0.5, 0.5)])
    assert losses.reconstruction_nll(mean, target, "gaussian").item() == pytest.approx(expected, rel=1e-12)


def test_reconstruction_is_per_sample_and_rejects_unknown_likelihood():
    out = losses.reconstruction_nll(torch.zeros(3, 1, 4, 4), torch.full((3, 1, 4, 4), 0.5), "bernoulli")
    assert out.shape == (3,) and torch.allclose(out, torch.full((3,), 16 * math.log(2)))
    with pytest.raises(ValueError, match="unknown likelihood"):
        losses.reconstruction_nll(torch.zeros(1, 2), torch.zeros(1, 2), "poisson")


# --- content matching ------------------------------------------------------------------------


def test_pairwise_class_kl_averages_same_class_pairs_only():
    # primary: two class-0 samples and one class-1 sample; auxiliary: one of each class
    mu_p, lv_p, y_p = t(0.0, 1.0, 10.0)[:, None], t(0.0, 0.0, 0.0)[:, None], torch.tensor([0, 0, 1])
    mu_a, lv_a, y_a = t(0.5, 11.0)[:, None], t(math.log(4.0), 0.0)[:, None], torch.tensor([0, 1])
    same_class = [kl_1d(0, 1, 0.5, 2), kl_1d(1, 1, 0.5, 2), kl_1d(10, 1, 11, 1)]
    got = losses.pairwise_class_kl(mu_p, lv_p, y_p, mu_a, lv_a, y_a)
    assert got.item() == pytest.approx(sum(same_class) / 3, rel=1e-12)
    # moving the auxiliary class-1 sample changes cross-class KLs a lot but only one same-class pair
    mu_a2 = t(0.5, 12.0)[:, None]
    moved = losses.pairwise_class_kl(mu_p, lv_p, y_p, mu_a2, lv_a, y_a)
    assert moved.item() == pytest.approx((same_class[0] + same_class[1] + kl_1d(10, 1, 12, 1)) / 3, rel=1e-12)
    # averaging over all pairs instead would give a very different value
    all_pairs = losses.kl_gaussians(mu_p[:, None], lv_p[:, None], mu_a[None], lv_a[None]).mean()
    assert abs(all_pairs.item() - got.item()) > 1.0


def test_pairwise_class_kl_without_shared_classes_is_zero():
    got = losses.pairwise_class_kl(t(1.0)[:, None], t(0.0)[:, None], torch.tensor([0]),
                                   t(5.0)[:, None], t(0.0)[:, None], torch.tensor([1]))
    assert got.item() == 0.0


def test_pairwise_class_kl_ignores_an_overflowing_cross_class_pair():
    # the class-1 auxiliary posterior is so narrow and far that its KL from the class-0 primary overflows float32
    mu_p, lv_p, y_p = torch.tensor([[0.0]]), torch.tensor([[0.0]]), torch.tensor([0])
    mu_a, lv_a, y_a = torch.tensor([[0.5], [1e25]]), torch.tensor([[0.0], [-30.0]]), torch.tensor([0, 1])
    assert torch.isinf(losses.kl_gaussians(mu_p, lv_p, mu_a[1:], lv_a[1:])).all()
    got = losses.pairwise_class_kl(mu_p, lv_p, y_p, mu_a, lv_a, y_a)
    assert got.item() == pytest.approx(kl_1d(0, 1, 0.5, 1), rel=1e-6)
    # (Its gradient is NaN: the mask's backward multiplies 0 by the overflowing pair's inf. Masking the inputs
    # instead would fix that but change the last bits of every recorded run; such a pair needs |mu| ~ 1e12,
    # a run that has already diverged, which the loop's guard on the weights stops.)


def test_class_moments_match_hand_mixture_moments():
    mu = t(0.0, 2.0, 5.0)[:, None]
    logvar = t(0.0, math.log(4.0), math.log(9.0))[:, None]
    y = torch.tensor([1, 1, 0])
    means, variances, counts = losses.class_moments(mu, logvar, y, 3)
    # class 1: mixture of N(0, 1) and N(2, 4): mean 1, E[z²] = (1 + 0 + 4 + 4) / 2 = 4.5, var 3.5
    assert means[:, 0].tolist() == pytest.approx([5.0, 1.0, 0.0])
    assert variances[:, 0].tolist() == pytest.approx([9.0, 3.5, 1e-6])  # empty class: clamped
    assert counts.tolist() == [1.0, 2.0, 0.0]


def test_class_moment_kl_only_over_classes_present_in_both():
    mu_p, lv_p, y_p = t(0.0, 2.0, 7.0)[:, None], t(0.0, 0.0, 0.0)[:, None], torch.tensor([0, 0, 1])
    mu_a, lv_a, y_a = t(1.0, -9.0)[:, None], t(math.log(4.0), 0.0)[:, None], torch.tensor([0, 2])
    # class 0 only: primary mixture of N(0,1), N(2,1): mean 1, var (1 + 0 + 1 + 4) / 2 - 1 = 2; auxiliary N(1, 4)
    expected = kl_1d(1, math.sqrt(2.0), 1, 2)
    got = losses.class_moment_kl(mu_p, lv_p, y_p, mu_a, lv_a, y_a)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_content_match_dispatches_by_name():
    args = (torch.randn(6, 3), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2]),
            torch.randn(6, 3), torch.randn(6, 3), torch.tensor([2, 1, 0, 2, 1, 0]))
    assert torch.equal(losses.content_match("pairwise", *args), losses.pairwise_class_kl(*args))
    assert torch.equal(losses.content_match("class_moments", *args), losses.class_moment_kl(*args))
    with pytest.raises(ValueError, match="unknown matching estimator"):
        losses.content_match("mmd", *args)


# --- the models' totals ----------------------------------------------------------------------


def _batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(torch.rand(6, 1, 4, 4, generator=g), torch.tensor([0, 1, 2, 0, 1, 2]),
                 torch.rand(8, 1, 4, 4, generator=g), torch.tensor([0, 1, 2, 2, 1, 0, 0, 1]))


def _encoder(out_dim: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(16, out_dim))


def _decoder(latent: int) -> nn.Module:
    return nn.Sequential(nn.Linear(latent, 16), nn.Unflatten(1, (1, 4, 4)))


W = LossWeights(reconstruction=0.7, classification=1.3, kl_prior=0.4, kl_match=2.5, auxiliary=0.6)


@pytest.mark.parametrize("match", ["pairwise", "class_moments"])
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_jade_total_is_the_weighted_sum_of_its_logged_terms(match, likelihood):
    torch.manual_seed(0)
    model = Jade(_encoder(8), _encoder(8), _decoder(4), _decoder(4), Classifier(2, [5], 3, 0.0), content_dim=2).double()
    model.eval()  # z = mu: deterministic, so recomputing the terms gives the same values
    b = _batch()
    b = Batch(b.x.double(), b.y, b.x_aux.double(), b.y_aux)
    w = LossWeights(**{**W.__dict__, "match": match, "likelihood": likelihood})
    terms = model.loss_terms(b, w)
    assert set(terms) == {"recon_primary", "ce_primary", "kl_primary", "recon_auxiliary", "ce_auxiliary",
                          "kl_auxiliary", "kl_match", "total"}
    expected = sum(w.reconstruction * terms[f"recon_{d}"] * (1 if d == "primary" else w.auxiliary)
                   + w.classification * terms[f"ce_{d}"] * (1 if d == "primary" else w.auxiliary)
                   + w.kl_prior * terms[f"kl_{d}"] * (1 if d == "primary" else w.auxiliary)
                   for d in ("primary", "auxiliary")) + w.kl_match * terms["kl_match"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-12)
    # and each logged term is the closed-form function of the posterior
    mu, logvar = model.posterior(b.x, "primary")
    assert terms["kl_primary"].item() == pytest.approx(losses.kl_standard_normal(mu, logvar).mean().item(), rel=1e-12)
    recon = losses.reconstruction_nll(model.primary_decoder(mu), b.x, likelihood).mean()
    assert terms["recon_primary"].item() == pytest.approx(recon.item(), rel=1e-12)
    mu_a, lv_a = model.posterior(b.x_aux, "auxiliary")
    km = losses.content_match(match, mu[:, :2], logvar[:, :2], b.y, mu_a[:, :2], lv_a[:, :2], b.y_aux)
    assert terms["kl_match"].item() == pytest.approx(km.item(), rel=1e-12)


def test_posterior_is_float32_under_bf16_autocast():
    """The GPU recipe's bf16 autocast runs the encoders in bf16; the KL terms see an fp32 posterior."""
    torch.manual_seed(0)
    model = Jade(_encoder(8), _encoder(8), _decoder(4), _decoder(4), Classifier(2, [5], 3, 0.0), content_dim=2).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.primary_encoder(_batch().x).dtype == torch.bfloat16
        mu, logvar = model.posterior(_batch().x, "primary")
        terms = model.loss_terms(_batch(), W)
    assert mu.dtype == logvar.dtype == torch.float32
    assert terms["kl_primary"].dtype == terms["kl_match"].dtype == torch.float32


@pytest.mark.parametrize("side", ["both", "primary"])
def test_match_gradient_reaches_the_chosen_encoders(side):
    """With match_gradient="primary" the auxiliary posterior is a fixed target: matching trains only the primary encoder."""
    torch.manual_seed(0)
    model = Jade(_encoder(8), _encoder(8), _decoder(4), _decoder(4), Classifier(2, [5], 3, 0.0), content_dim=2).eval()
    only_match = LossWeights(reconstruction=0.0, classification=0.0, kl_prior=0.0, kl_match=1.0, match_gradient=side)
    terms = model.loss_terms(_batch(), only_match)
    assert terms["kl_match"].item() > 0
    terms["total"].backward()
    grad_norm = {d: sum(p.grad.abs().sum().item() for p in getattr(model, f"{d}_encoder").parameters() if p.grad is not None)
                 for d in ("primary", "auxiliary")}
    assert grad_norm["primary"] > 0
    assert (grad_norm["auxiliary"] > 0) == (side == "both")


def test_single_and_paired_totals():
    torch.manual_seed(0)
    b = _batch()
    single = SingleClassifier(_encoder(2), Classifier(2, [5], 3, 0.0)).eval()
    terms = single.loss_terms(b, W)
    assert set(terms) == {"ce_primary", "total"}
    assert terms["total"].item() == pytest.approx(W.classification * terms["ce_primary"].item(), rel=1e-6)
    paired = PairedClassifier(_encoder(2), _encoder(2), Classifier(2, [5], 3, 0.0)).eval()
    terms = paired.loss_terms(b, W)
    expected = W.classification * (terms["ce_primary"] + W.auxiliary * terms["ce_auxiliary"])
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("method", ["paired", "jade"])
def test_one_classifier_pass_over_both_batches_equals_one_pass_per_batch(method):
    """Training classifies both batches in one pass (faster); each cross-entropy must stay that of its own batch."""
    torch.manual_seed(0)
    b = _batch()  # 6 primary and 8 auxiliary images: a wrong split would show
    b = Batch(b.x.double(), b.y, b.x_aux.double(), b.y_aux)
    if method == "paired":
        model = PairedClassifier(_encoder(2), _encoder(2), Classifier(2, [5], 3, 0.0)).double().train()
        expected = {d: nn.functional.cross_entropy(model.logits(x, d), y)
                    for d, x, y in (("primary", b.x, b.y), ("auxiliary", b.x_aux, b.y_aux))}
        terms = model.loss_terms(b, W)
    else:
        model = Jade(_encoder(8), _encoder(8), _decoder(4), _decoder(4), Classifier(2, [5], 3, 0.0), 2).double().train()
        torch.manual_seed(1)  # the same posterior samples below: primary's drawn first, then the auxiliary's
        expected = {d: model.elbo_terms(x, y, d, "bernoulli")["ce"]
                    for d, x, y in (("primary", b.x, b.y), ("auxiliary", b.x_aux, b.y_aux))}
        torch.manual_seed(1)
        terms = model.loss_terms(b, W)
    for d in ("primary", "auxiliary"):
        assert terms[f"ce_{d}"].item() == pytest.approx(expected[d].item(), rel=1e-12), d


@pytest.mark.parametrize(
    ("classifier_input", "on_mean"),
    [("sample", {"primary": False, "auxiliary": False}), ("mean", {"primary": True, "auxiliary": True}),
     ("auxiliary-mean", {"primary": False, "auxiliary": True})],
)
def test_jade_classifier_input_in_training(classifier_input, on_mean):
    torch.manual_seed(0)
    model = Jade(_encoder(8), _encoder(8), _decoder(4), _decoder(4), Classifier(2, [5], 3, 0.0), 2, classifier_input)
    model.train()  # z is a posterior sample here
    b = _batch()
    for domain in ("primary", "auxiliary"):
        ce = model.elbo_terms(b.x, b.y, domain, "bernoulli")["ce"]
        mu, _ = model.posterior(b.x, domain)
        ce_of_mean = nn.functional.cross_entropy(model.classifier(mu[:, :2]), b.y)
        assert torch.isclose(ce, ce_of_mean).item() == on_mean[domain], domain
