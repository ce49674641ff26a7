"""Batch indices for a step: shuffled primary batches and class-matched (or shuffled) auxiliary batches."""

from __future__ import annotations

import math

import torch

from jadekit.errors import DataError


def _next_slice(
    perm: torch.Tensor, pos: int, n: int, pool_size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The next `n` positions of an epoch-wise permutation of a pool, appending a fresh epoch when it runs out.

    Returns:
        (positions, permutation, new position).
    """
    while pos + n > len(perm):
        perm = torch.cat([perm[pos:], torch.randperm(pool_size, generator=generator)])
        pos = 0
    return perm[pos : pos + n], perm, pos + n


class _ByClass:
    """A pool's positions sorted by class, to draw samples of given classes at random."""

    def __init__(self, labels: torch.Tensor, n_classes: int) -> None:
        self.count = torch.bincount(labels, minlength=n_classes)
        self.order = torch.argsort(labels, stable=True)
        self.start = torch.cumsum(self.count, 0) - self.count
        self.present = self.count.nonzero().flatten()

    def draw(self, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One position per entry of `classes`, uniformly within that class (with replacement)."""
        offset = (torch.rand(len(classes), generator=generator) * self.count[classes]).long()
        return self.order[self.start[classes] + offset]


class PairedBatchSampler:
    """Draws primary batches epoch by epoch and, by default, auxiliary batches holding the same classes.

    class_matched (default): every class in a primary batch is present in its auxiliary batch
    (when the auxiliary batch is at least as large as the number of distinct classes), the rest
    repeats the primary batch's labels, and each sample is drawn at random within its class; so
    same-class pairs exist for the content-matching loss. shuffled: the auxiliary pool is read
    epoch by epoch like the primary one, classes as they come (what a shuffling DataLoader
    does). Primary batches are read epoch by epoch (shuffled) or, with primary_sampling
    "class_balanced", drawn class first (uniform over the classes present), then an image at
    random within its class, so rare classes are seen as often as common ones. All state is in
    tensors, so it checkpoints exactly.

    Args:
        primary_labels: labels of the primary training pool (positions index this pool).
        auxiliary_labels: labels of the auxiliary training pool, or None for no auxiliary.
        batch_size: primary samples per batch (capped at the pool size).
        auxiliary_batch_size: auxiliary samples per batch.
        seed: seeds the sampler's own generator.
        auxiliary_sampling: "class_matched" or "shuffled".
        primary_sampling: "shuffled" or "class_balanced".
    """

    def __init__(
        self,
        primary_labels: torch.Tensor,
        auxiliary_labels: torch.Tensor | None,
        batch_size: int,
        auxiliary_batch_size: int,
        seed: int,
        auxiliary_sampling: str = "class_matched",
        primary_sampling: str = "shuffled",
    ) -> None:
        if primary_sampling not in ("shuffled", "class_balanced"):
            raise ValueError(f"unknown primary sampling {primary_sampling!r}")
        if auxiliary_sampling not in ("class_matched", "shuffled"):
            raise ValueError(f"unknown auxiliary sampling {auxiliary_sampling!r}")
        self.generator = torch.Generator().manual_seed(seed)
        self.n_primary = len(primary_labels)
        self.primary_labels = primary_labels
        self.batch_size = min(batch_size, self.n_primary)
        self.auxiliary_batch_size = auxiliary_batch_size
        self.perm = torch.randperm(self.n_primary, generator=self.generator)
        self.pos = 0
        n_classes = 1 + max((int(t.max()) for t in (primary_labels, auxiliary_labels) if t is not None and len(t)), default=0)
        self.primary_by_class = _ByClass(primary_labels, n_classes) if primary_sampling == "class_balanced" else None
        self.auxiliary: _ByClass | None = None
        self.aux_perm: torch.Tensor | None = None
        self.aux_pos = 0
        if auxiliary_labels is not None:
            self.auxiliary = _ByClass(auxiliary_labels, n_classes)
            missing = sorted(set(primary_labels.unique().tolist()) - set(self.auxiliary.present.tolist()))
            if missing:
                raise DataError(
                    f"the auxiliary training data has no samples of class(es) {missing} present in the primary data",
                    hint="use an auxiliary dataset (or limit) that covers every class.",
                )
            if auxiliary_sampling == "shuffled":
                self.aux_perm = torch.randperm(len(auxiliary_labels), generator=self.generator)

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Positions of the next primary batch and its auxiliary batch (None without auxiliary)."""
        if self.primary_by_class is None:
            primary, self.perm, self.pos = _next_slice(self.perm, self.pos, self.batch_size, self.n_primary, self.generator)
        else:
            present = self.primary_by_class.present
            classes = present[torch.randint(len(present), (self.batch_size,), generator=self.generator)]
            primary = self.primary_by_class.draw(classes, self.generator)
        if self.auxiliary is None:
            return primary, None
        if self.aux_perm is not None:
            auxiliary, self.aux_perm, self.aux_pos = _next_slice(
                self.aux_perm, self.aux_pos, self.auxiliary_batch_size, len(self.auxiliary.order), self.generator
            )
            return primary, auxiliary
        y = self.primary_labels[primary]
        reps = math.ceil(self.auxiliary_batch_size / len(y))
        wanted = torch.cat([y.unique(), y.repeat(reps)])[: self.auxiliary_batch_size]
        return primary, self.auxiliary.draw(wanted, self.generator)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": torch.tensor(self.pos)}
        if self.aux_perm is not None:
            state |= {"aux_perm": self.aux_perm.clone(), "aux_pos": torch.tensor(self.aux_pos)}
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"])
        if self.aux_perm is not None and "aux_perm" in state:  # absent: a class-matched run resumed as shuffled
            self.aux_perm = state["aux_perm"].clone()
            self.aux_pos = int(state["aux_pos"])
