"""Seeded, stratified labelled subsets and the validation split carved from them."""

from __future__ import annotations

import torch

from jadekit.errors import DataError


def _shuffled_by_class(labels: torch.Tensor, generator: torch.Generator, n_classes: int = 0) -> list[torch.Tensor]:
    """Indices of each of (at least) `n_classes` classes, each in a seeded random order."""
    n_classes = max(n_classes, int(labels.max()) + 1 if len(labels) else 0)
    order = torch.randperm(len(labels), generator=generator)
    shuffled = labels[order]
    return [order[shuffled == c] for c in range(n_classes)]


def stratified_subset(
    labels: torch.Tensor,
    per_class: int | None,
    limit: int | None,
    generator: torch.Generator,
    class_names: tuple[str, ...] = (),
    what: str = "dataset",
) -> torch.Tensor:
    """Draw a labelled subset: `per_class` of each class, then at most `limit` in all.

    The cap keeps class proportions (largest remainders); without either bound, all
    samples are returned in a seeded random order.
    """
    pools = _shuffled_by_class(labels, generator, len(class_names))
    if per_class is not None:
        for c, pool in enumerate(pools):
            if len(pool) < per_class:
                name = class_names[c] if c < len(class_names) else str(c)
                raise DataError(
                    f"{what}: labels_per_class = {per_class}, but class '{name}' has only {len(pool)} samples",
                    hint=f"lower labels_per_class to at most {min(len(p) for p in pools)}.",
                )
        pools = [p[:per_class] for p in pools]
    total = sum(len(p) for p in pools)
    if limit is not None and limit < total:
        quotas = [len(p) * limit / total for p in pools]
        take = [int(q) for q in quotas]
        by_remainder = sorted(range(len(pools)), key=lambda c: take[c] - quotas[c])
        for c in by_remainder[: limit - sum(take)]:
            take[c] += 1
        pools = [p[:t] for p, t in zip(pools, take, strict=True)]
    picked = torch.cat(pools) if pools else torch.empty(0, dtype=torch.long)
    return picked[torch.randperm(len(picked), generator=generator)]


def train_val_split(
    indices: torch.Tensor, labels: torch.Tensor, val_share: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split drawn indices into train and validation, stratified by class.

    Each class keeps at least one training sample; a class with two or more samples gives
    at least one to validation when `val_share` > 0.
    """
    if val_share <= 0:
        return indices, indices[:0]
    train, val = [], []
    for pool in _shuffled_by_class(labels[indices], generator):
        n_val = min(max(1, round(val_share * len(pool))), len(pool) - 1) if len(pool) >= 2 else 0
        val.append(indices[pool[:n_val]])
        train.append(indices[pool[n_val:]])
    return torch.cat(train), torch.cat(val)
