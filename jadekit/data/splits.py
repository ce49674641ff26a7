"""Seeded, stratified labelled subsets and the validation split carved from them.

Both draws take optional `groups` (e.g. patients, `ImageSet.groups`): with them, every group
is kept whole, on one side of each draw; without them, the draws are sample by sample.
"""

from __future__ import annotations

import torch

from jadekit.errors import DataError


def _shuffled_by_class(labels: torch.Tensor, generator: torch.Generator, n_classes: int = 0) -> list[torch.Tensor]:
    """Indices of each of (at least) `n_classes` classes, each in a seeded random order."""
    n_classes = max(n_classes, int(labels.max()) + 1 if len(labels) else 0)
    order = torch.randperm(len(labels), generator=generator)
    shuffled = labels[order]
    return [order[shuffled == c] for c in range(n_classes)]


def _grouped_by_class(
    labels: torch.Tensor, groups: torch.Tensor, generator: torch.Generator, n_classes: int = 0
) -> list[list[torch.Tensor]]:
    """The groups of each of (at least) `n_classes` classes, each class's in a seeded random order.

    A group is the tensor of its members' positions in `labels`; it belongs to its most
    common label (ties: the lowest), so a group with mixed labels still moves as one.
    """
    if tuple(groups.shape) != tuple(labels.shape):
        raise DataError(f"groups has shape {tuple(groups.shape)} but labels has {tuple(labels.shape)}")
    n_classes = max(n_classes, int(labels.max()) + 1 if len(labels) else 0)
    ids, inverse = torch.unique(groups, return_inverse=True)
    counts = torch.zeros(len(ids), max(n_classes, 1), dtype=torch.long)
    counts.index_put_((inverse, labels), torch.ones_like(labels), accumulate=True)
    group_class = counts.argmax(1)
    members = torch.split(torch.argsort(inverse, stable=True), counts.sum(1).tolist())
    order = torch.randperm(len(ids), generator=generator).tolist()
    return [[members[i] for i in order if int(group_class[i]) == c] for c in range(n_classes)]


def _whole_groups_until(pool: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """The fewest leading groups of `pool` that hold at least `n` samples (all of them if fewer)."""
    taken, count = [], 0
    for group in pool:
        if count >= n:
            break
        taken.append(group)
        count += len(group)
    return taken


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat(tensors) if tensors else torch.empty(0, dtype=torch.long)


def stratified_subset(
    labels: torch.Tensor,
    per_class: int | None,
    limit: int | None,
    generator: torch.Generator,
    class_names: tuple[str, ...] = (),
    what: str = "dataset",
    groups: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw a labelled subset: `per_class` of each class, then at most `limit` in all.

    The cap keeps class proportions (largest remainders); without either bound, all
    samples are returned in a seeded random order.

    With `groups` (one id per sample, e.g. a patient), whole groups are drawn, never part
    of one: each class's groups are taken in a seeded random order until the class holds at
    least `per_class` samples (so it may hold up to one group's size minus one more), and
    likewise until each class reaches its share of `limit` (so the total may exceed `limit`
    by less than one group per class). A group counts for its most common label. Without
    `groups`, the draw is the sample-by-sample one, unchanged for a given generator state.
    """
    if groups is not None:
        return _grouped_subset(labels, groups, per_class, limit, generator, class_names, what)
    pools = _shuffled_by_class(labels, generator, len(class_names))
    if per_class is not None:
        sizes = [len(p) for p in pools]
        if min(sizes) < per_class:
            raise _too_few(what, per_class, sizes, class_names)
        pools = [p[:per_class] for p in pools]
    total = sum(len(p) for p in pools)
    if limit is not None and limit < total:
        take = _largest_remainders([len(p) for p in pools], limit)
        pools = [p[:t] for p, t in zip(pools, take, strict=True)]
    picked = _cat(pools)
    return picked[torch.randperm(len(picked), generator=generator)]


def _too_few(what: str, per_class: int, sizes: list[int], class_names: tuple[str, ...]) -> DataError:
    """The error for a class with fewer than `per_class` samples: the emptiest class, and a fix that can work."""
    def name(c: int) -> str:
        return class_names[c] if c < len(class_names) else str(c)

    if empty := [f"'{name(c)}'" for c, n in enumerate(sizes) if n == 0]:
        return DataError(f"{what}: class {', '.join(empty)} has no samples at all (labels_per_class = {per_class})",
                         hint="check the data files (a truncated or partial copy?) and the dataset's class list: "
                              "every class it names needs labelled samples.")
    c = min(range(len(sizes)), key=sizes.__getitem__)
    return DataError(f"{what}: labels_per_class = {per_class}, but class '{name(c)}' has only {sizes[c]} samples",
                     hint=f"lower labels_per_class to at most {sizes[c]}.")


def _largest_remainders(sizes: list[int], limit: int) -> list[int]:
    """Split `limit` over classes of `sizes` in proportion (largest remainders)."""
    total = sum(sizes)
    quotas = [n * limit / total for n in sizes]
    take = [int(q) for q in quotas]
    by_remainder = sorted(range(len(sizes)), key=lambda c: take[c] - quotas[c])
    for c in by_remainder[: limit - sum(take)]:
        take[c] += 1
    return take


def _grouped_subset(
    labels: torch.Tensor,
    groups: torch.Tensor,
    per_class: int | None,
    limit: int | None,
    generator: torch.Generator,
    class_names: tuple[str, ...],
    what: str,
) -> torch.Tensor:
    """`stratified_subset` in whole groups (see there)."""
    pools = _grouped_by_class(labels, groups, generator, len(class_names))
    sizes = [sum(len(g) for g in pool) for pool in pools]
    if per_class is not None:
        for c, pool in enumerate(pools):
            if sizes[c] < per_class:
                name = class_names[c] if c < len(class_names) else str(c)
                raise DataError(
                    f"{what}: labels_per_class = {per_class}, but class '{name}' has only {sizes[c]} samples "
                    f"(in {len(pool)} groups, e.g. patients; a group counts for its most common label)",
                    hint=f"lower labels_per_class to at most {min(sizes)}." if min(sizes) else
                    f"give class '{name}' groups where it is the most common label, or check the labels and groups.",
                )
        pools = [_whole_groups_until(pool, per_class) for pool in pools]
        sizes = [sum(len(g) for g in pool) for pool in pools]
    if limit is not None and limit < sum(sizes):
        take = _largest_remainders(sizes, limit)
        pools = [_whole_groups_until(pool, t) for pool, t in zip(pools, take, strict=True)]
    picked = _cat([g for pool in pools for g in pool])
    return picked[torch.randperm(len(picked), generator=generator)]


def train_val_split(
    indices: torch.Tensor,
    labels: torch.Tensor,
    val_share: float,
    generator: torch.Generator,
    groups: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split drawn indices into train and validation, stratified by class.

    Each class keeps at least one training sample; a class with two or more samples gives
    at least one to validation when `val_share` > 0.

    With `groups` (one id per entry of `labels`, e.g. a patient), whole groups go to one
    side: `val_share` of each class's groups (rounded; a group counts for its most common
    label) go to validation, each class keeps at least one training group, and a class with
    two or more groups gives at least one to validation. A class drawn from a single group
    therefore has no validation sample. Without `groups`, the split is unchanged.
    """
    if val_share <= 0:
        return indices, indices[:0]
    if groups is not None:
        train_g, val_g = [], []
        for pool in _grouped_by_class(labels[indices], groups[indices], generator):
            n_val = _n_val(len(pool), val_share)
            val_g += pool[:n_val]
            train_g += pool[n_val:]
        return indices[_cat(train_g)], indices[_cat(val_g)]
    train, val = [], []
    for pool in _shuffled_by_class(labels[indices], generator):
        n_val = _n_val(len(pool), val_share)
        val.append(indices[pool[:n_val]])
        train.append(indices[pool[n_val:]])
    return torch.cat(train), torch.cat(val)


def _n_val(n: int, val_share: float) -> int:
    """How many of a class's `n` samples (or groups) go to validation: the share, rounded, at least one, never all."""
    return min(max(1, round(val_share * n)), n - 1) if n >= 2 else 0
