"""The paper's three models, built from ready-made encoder/decoder modules.

Each model exposes the same small contract: `loss_terms(batch, weights)` returns named
loss terms (with "total"), and `logits(x, domain)` classifies a float batch. Module
attribute names (`primary_encoder`, ...) are the keys of `jadekit describe`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from jadekit.engine import losses
from jadekit.engine.layers import Dropout

Domain = Literal["primary", "auxiliary"]


class Classifier(nn.Module):
    """The shared MLP: blocks of (linear, ReLU, dropout), then a linear layer to the classes."""

    def __init__(self, in_dim: int, hidden: list[int], n_classes: int, dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.ReLU(inplace=True), Dropout(dropout)]
            in_dim = width
        layers.append(nn.Linear(in_dim, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@dataclass(frozen=True)
class Batch:
    """One training step's data: float images in [0, 1] and int64 labels per domain."""

    x: torch.Tensor
    y: torch.Tensor
    x_aux: torch.Tensor | None = None
    y_aux: torch.Tensor | None = None


@dataclass(frozen=True)
class LossWeights:
    """Weights of each term at the current step (KL warm-up already applied)."""

    reconstruction: float = 1.0
    classification: float = 1.0
    kl_prior: float = 1.0
    kl_match: float = 1.0
    auxiliary: float = 1.0
    likelihood: str = "bernoulli"
    match: str = "pairwise"
    match_gradient: str = "both"  # "primary": the auxiliary posterior is a fixed target of the matching KL


class SingleClassifier(nn.Module):
    """Benchmark: primary encoder → content bottleneck → classifier."""

    uses_auxiliary = False

    def __init__(self, primary_encoder: nn.Module, classifier: Classifier) -> None:
        super().__init__()
        self.primary_encoder = primary_encoder
        self.classifier = classifier

    def logits(self, x: torch.Tensor, domain: Domain = "primary") -> torch.Tensor:
        if domain != "primary":
            raise ValueError("the single classifier has no auxiliary encoder")
        return self.classifier(self.primary_encoder(x))

    def loss_terms(self, batch: Batch, w: LossWeights) -> dict[str, torch.Tensor]:
        ce = F.cross_entropy(self.logits(batch.x), batch.y)
        return {"ce_primary": ce, "total": w.classification * ce}


class PairedClassifier(nn.Module):
    """One encoder per dataset, one shared classifier; loss = sum of both cross-entropies."""

    uses_auxiliary = True

    def __init__(self, primary_encoder: nn.Module, auxiliary_encoder: nn.Module, classifier: Classifier) -> None:
        super().__init__()
        self.primary_encoder = primary_encoder
        self.auxiliary_encoder = auxiliary_encoder
        self.classifier = classifier

    def logits(self, x: torch.Tensor, domain: Domain = "primary") -> torch.Tensor:
        encoder = self.primary_encoder if domain == "primary" else self.auxiliary_encoder
        return self.classifier(encoder(x))

    def loss_terms(self, batch: Batch, w: LossWeights) -> dict[str, torch.Tensor]:
        ce_p, ce_a = _shared_cross_entropies(self.classifier, self.primary_encoder(batch.x), self.auxiliary_encoder(batch.x_aux),
                                             batch)
        total = w.classification * (ce_p + w.auxiliary * ce_a)
        return {"ce_primary": ce_p, "ce_auxiliary": ce_a, "total": total}


class Jade(nn.Module):
    """Two VAEs whose content dims share a classifier and are matched across datasets.

    Encoders output 2 * latent_dim numbers: the Gaussian mean and log-variance. The classifier
    is trained on a posterior sample of the content (`classifier_input="sample"`, the ELBO's
    E_q[log p(l|z)]), on its mean ("mean"), or on the mean for the auxiliary dataset only
    ("auxiliary-mean"); it always predicts from the mean.
    """

    uses_auxiliary = True

    def __init__(
        self,
        primary_encoder: nn.Module,
        auxiliary_encoder: nn.Module,
        primary_decoder: nn.Module,
        auxiliary_decoder: nn.Module,
        classifier: Classifier,
        content_dim: int,
        classifier_input: str = "sample",
    ) -> None:
        super().__init__()
        self.classifier_input = classifier_input
        self.primary_encoder = primary_encoder
        self.auxiliary_encoder = auxiliary_encoder
        self.primary_decoder = primary_decoder
        self.auxiliary_decoder = auxiliary_decoder
        self.classifier = classifier
        self.content_dim = content_dim

    def posterior(self, x: torch.Tensor, domain: Domain) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x) for a domain."""
        encoder = self.primary_encoder if domain == "primary" else self.auxiliary_encoder
        h = encoder(x)  # bf16 under autocast: the KL terms are computed in (at least) fp32, for its range
        mu, logvar = h.to(torch.promote_types(h.dtype, torch.float32)).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)  # keeps exp() finite early in training

    def logits(self, x: torch.Tensor, domain: Domain = "primary") -> torch.Tensor:
        """Classify from the content mean (deterministic; used at evaluation)."""
        mu, _ = self.posterior(x, domain)
        return self.classifier(mu[:, : self.content_dim])

    def elbo_terms(self, x: torch.Tensor, y: torch.Tensor, domain: Domain, likelihood: str) -> dict[str, torch.Tensor]:
        """Per-domain negative ELBO terms (batch means) plus the posterior for matching."""
        terms = self.unlabelled_terms(x, domain, likelihood)
        terms["ce"] = F.cross_entropy(self.classifier(terms.pop("content")), y)
        return terms

    def unlabelled_terms(self, x: torch.Tensor, domain: Domain, likelihood: str) -> dict[str, torch.Tensor]:
        """`elbo_terms` without the classification term: reconstruction NLL, KL, the posterior, and the
        content the classifier is trained on (a posterior sample, or the mean as `classifier_input` says)."""
        mu, logvar = self.posterior(x, domain)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        decoder = self.primary_decoder if domain == "primary" else self.auxiliary_decoder
        on_mean = self.classifier_input == "mean" or (self.classifier_input == "auxiliary-mean" and domain == "auxiliary")
        return {
            "recon": losses.reconstruction_nll(decoder(z), x, likelihood).mean(),
            "kl": losses.kl_standard_normal(mu, logvar).mean(),
            "mu": mu,
            "logvar": logvar,
            "content": (mu if on_mean else z)[:, : self.content_dim],
        }

    def loss_terms(self, batch: Batch, w: LossWeights) -> dict[str, torch.Tensor]:
        p = self.unlabelled_terms(batch.x, "primary", w.likelihood)
        a = self.unlabelled_terms(batch.x_aux, "auxiliary", w.likelihood)
        p["ce"], a["ce"] = _shared_cross_entropies(self.classifier, p["content"], a["content"], batch)
        c = self.content_dim
        mu_a, logvar_a = a["mu"][:, :c], a["logvar"][:, :c]
        if w.match_gradient == "primary":
            mu_a, logvar_a = mu_a.detach(), logvar_a.detach()
        match = losses.content_match(w.match, p["mu"][:, :c], p["logvar"][:, :c], batch.y, mu_a, logvar_a, batch.y_aux)
        terms = {f"{k}_{d}": t[k] for d, t in (("primary", p), ("auxiliary", a)) for k in ("recon", "ce", "kl")}
        terms["kl_match"] = match

        def neg_elbo(t: dict[str, torch.Tensor]) -> torch.Tensor:
            return w.reconstruction * t["recon"] + w.classification * t["ce"] + w.kl_prior * t["kl"]

        terms["total"] = neg_elbo(p) + w.auxiliary * neg_elbo(a) + w.kl_match * match
        return terms


def _shared_cross_entropies(classifier: Classifier, content_p: torch.Tensor, content_a: torch.Tensor,
                            batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Primary and auxiliary cross-entropies from one classifier pass over both batches' content, stacked.

    The same function as one pass per batch, in half as many and larger matrix products: 7-10 %
    off a paired or jade training step on a 2-core CPU (docs/results.md, Speed).
    """
    logits_p, logits_a = classifier(torch.cat([content_p, content_a])).split([len(content_p), len(content_a)])
    return F.cross_entropy(logits_p, batch.y), F.cross_entropy(logits_a, batch.y_aux)
