"""Loss terms of JADE as pure functions on tensors (diagonal Gaussians throughout)."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def reconstruction_nll(output: torch.Tensor, target: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Per-sample negative log-likelihood of `target` in [0, 1], summed over pixels.

    Args:
        output: decoder output: Bernoulli logits, or Gaussian means (unit variance).
        target: images in [0, 1], same shape.
        likelihood: "bernoulli" or "gaussian".
    """
    if likelihood == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(output, target, reduction="none")
    elif likelihood == "gaussian":
        nll = 0.5 * (output - target).pow(2) + 0.5 * math.log(2 * math.pi)
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}")
    return nll.flatten(1).sum(1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, summed over dims."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def kl_gaussians(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N1 || N2) of diagonal Gaussians, summed over the last dim (broadcasts)."""
    return 0.5 * (logvar2 - logvar1 + (logvar1.exp() + (mu1 - mu2).pow(2)) / logvar2.exp() - 1.0).sum(-1)


def pairwise_class_kl(
    mu_p: torch.Tensor, logvar_p: torch.Tensor, y_p: torch.Tensor,
    mu_a: torch.Tensor, logvar_a: torch.Tensor, y_a: torch.Tensor,
) -> torch.Tensor:
    """Mean of KL(q(c|x_i) || q(c|y_j)) over every same-class pair (i primary, j auxiliary)."""
    kl = kl_gaussians(mu_p[:, None], logvar_p[:, None], mu_a[None], logvar_a[None])  # (P, A)
    same = y_p[:, None] == y_a[None]
    # where, not kl * same: an overflowing cross-class pair (inf * 0 = NaN) must not reach the loss (its gradient is
    # still NaN, but an overflow needs |mu| ~ 1e12: a run that has already diverged, stopped by the loop's guard)
    return torch.where(same, kl, 0.0).sum() / same.sum().clamp_min(1)


def class_moments(mu: torch.Tensor, logvar: torch.Tensor, y: torch.Tensor, n_classes: int):
    """Moment-matched diagonal Gaussian of each class's posterior mixture on the batch.

    Returns:
        (means, variances, counts) with shapes (K, D), (K, D), (K,).
    """
    onehot = F.one_hot(y, n_classes).to(mu.dtype)  # (N, K)
    counts = onehot.sum(0)
    denom = counts.clamp_min(1.0)[:, None]
    mean = onehot.T @ mu / denom
    second = onehot.T @ (logvar.exp() + mu.pow(2)) / denom
    return mean, (second - mean.pow(2)).clamp_min(1e-6), counts


def class_moment_kl(
    mu_p: torch.Tensor, logvar_p: torch.Tensor, y_p: torch.Tensor,
    mu_a: torch.Tensor, logvar_a: torch.Tensor, y_a: torch.Tensor,
) -> torch.Tensor:
    """Mean over classes present in both batches of KL(per-class Gaussian_p || Gaussian_a)."""
    k = int(torch.maximum(y_p.max(), y_a.max())) + 1
    m_p, v_p, n_p = class_moments(mu_p, logvar_p, y_p, k)
    m_a, v_a, n_a = class_moments(mu_a, logvar_a, y_a, k)
    both = ((n_p > 0) & (n_a > 0)).to(mu_p.dtype)
    kl = kl_gaussians(m_p, v_p.log(), m_a, v_a.log())
    return (kl * both).sum() / both.sum().clamp_min(1.0)


def content_match(
    estimator: str,
    mu_p: torch.Tensor, logvar_p: torch.Tensor, y_p: torch.Tensor,
    mu_a: torch.Tensor, logvar_a: torch.Tensor, y_a: torch.Tensor,
) -> torch.Tensor:
    """KL(q(z_content | x, l) || q(z_content | y, l)) by the named estimator."""
    if estimator == "pairwise":
        return pairwise_class_kl(mu_p, logvar_p, y_p, mu_a, logvar_a, y_a)
    if estimator == "class_moments":
        return class_moment_kl(mu_p, logvar_p, y_p, mu_a, logvar_a, y_a)
    raise ValueError(f"unknown matching estimator {estimator!r}")
