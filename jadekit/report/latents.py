"""Latent codes of a trained model, linear probes on them, and a 2-D PCA embedding."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from jadekit.engine.evaluate import to_float


@torch.inference_mode()
def encode(model: nn.Module, images: torch.Tensor, domain: str, device: torch.device, batch_size: int = 512) -> torch.Tensor:
    """Deterministic codes: jade's posterior means (all latent dims), else the encoder's bottleneck features."""
    was_training = model.training
    model.eval()
    encoder = model.primary_encoder if domain == "primary" else model.auxiliary_encoder
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = to_float(images[i : i + batch_size].to(device))
            out.append(model.posterior(x, domain)[0] if hasattr(model, "posterior") else encoder(x))
    finally:
        model.train(was_training)
    return torch.cat(out).float().cpu()


@torch.inference_mode()
def decode(model: nn.Module, z: torch.Tensor, domain: str, likelihood: str, device: torch.device) -> torch.Tensor:
    """Decoder output as images in [0, 1] (Bernoulli logits through a sigmoid, Gaussian means clamped)."""
    decoder = model.primary_decoder if domain == "primary" else model.auxiliary_decoder
    out = decoder(z.to(device)).float().cpu()
    return out.sigmoid() if likelihood == "bernoulli" else out.clamp(0, 1)


def linear_probe(features: torch.Tensor, targets: torch.Tensor, seed: int = 0, steps: int = 200,
                 groups: torch.Tensor | None = None) -> dict[str, float]:
    """Held-out accuracy of a logistic regression (standardised inputs, L-BFGS, small L2).

    The samples are shuffled with `seed` and halved: the first half trains, the second scores. With `groups` (e.g. a
    patient id per image) whole groups are shuffled and go to one half each, so a probe cannot score a patient's
    images by having trained on that patient's other images. Chance is the share of the most frequent class in the
    held-out half.
    """
    g = torch.Generator().manual_seed(seed)
    if groups is None:
        perm = torch.randperm(len(targets), generator=g)
        half = len(targets) // 2
    else:
        perm, half = _group_halves(groups, targets, g)
    x, y = features[perm].double(), targets[perm].long()
    if half == 0 or half == len(y) or len(torch.unique(y[:half])) < 2:  # too few groups to hold out
        return {"accuracy": math.nan, "chance": math.nan, "n_train": half, "n_test": len(y) - half}
    mean, std = x[:half].mean(0), x[:half].std(0).clamp_min(1e-6)
    x = (x - mean) / std
    n_classes = int(y.max()) + 1
    w = torch.zeros(x.shape[1], n_classes, dtype=torch.double, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.double, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x[:half] @ w + b, y[:half]) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        acc = ((x[half:] @ w + b).argmax(1) == y[half:]).double().mean().item()
    chance = torch.bincount(y[half:], minlength=n_classes).max().item() / max(len(y) - half, 1)
    return {"accuracy": acc, "chance": chance, "n_train": half, "n_test": len(y) - half}


def _group_halves(groups: torch.Tensor, targets: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, int]:
    """Sample order with the training half first, and its size: each class's groups (a group counts for its most
    common target) in a seeded random order, the first half of them (at least one, and one left over when a class
    has two or more) to train, so both halves hold every class that has two groups."""
    ids, inverse = torch.unique(groups, return_inverse=True)
    group_class = torch.stack([torch.mode(targets[inverse == k]).values for k in range(len(ids))])
    train = torch.zeros(len(ids), dtype=torch.bool)
    for c in torch.unique(group_class):
        members = torch.nonzero(group_class == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        train[members[: max(1, len(members) // 2)]] = True
    order = torch.randperm(len(groups), generator=g)  # within each half, images in a random order
    first = order[train[inverse[order]]]
    return torch.cat([first, order[~train[inverse[order]]]]), len(first)


def pca2(x: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """Projection on the top two principal components and their shares of the variance."""
    xc = x.double() - x.double().mean(0)
    _, s, v = torch.linalg.svd(xc, full_matrices=False)
    share = (s**2 / (s**2).sum()).tolist()
    return (xc @ v[:2].T).float(), share[:2]


def normalised(z: torch.Tensor) -> torch.Tensor:
    """Each latent dim divided by its standard deviation over all samples (after centring): Fig. 2's scale."""
    return (z - z.mean(0)) / z.std(0).clamp_min(1e-6)
