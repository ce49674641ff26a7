"""Batch indices for a step: shuffled primary batches and class-matched auxiliary batches."""

from __future__ import annotations

import math

import torch

from jadekit.errors import DataError


class PairedBatchSampler:
    """Draws primary batches epoch by epoch and auxiliary batches holding the same classes.

    Every class in a primary batch is present in its auxiliary batch (when the auxiliary
    batch is at least as large as the number of distinct classes), so same-class pairs exist
    for the content-matching loss. All state is in tensors, so it checkpoints exactly.

    Args:
        primary_labels: labels of the primary training pool (positions index this pool).
        auxiliary_labels: labels of the auxiliary training pool, or None for no auxiliary.
        batch_size: primary samples per batch (capped at the pool size).
        auxiliary_batch_size: auxiliary samples per batch.
        seed: seeds the sampler's own generator.
    """

    def __init__(
        self,
        primary_labels: torch.Tensor,
        auxiliary_labels: torch.Tensor | None,
        batch_size: int,
        auxiliary_batch_size: int,
        seed: int,
    ) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.n_primary = len(primary_labels)
        self.primary_labels = primary_labels
        self.batch_size = min(batch_size, self.n_primary)
        self.auxiliary_batch_size = auxiliary_batch_size
        self.perm = torch.randperm(self.n_primary, generator=self.generator)
        self.pos = 0
        self.aux_order = self.aux_start = self.aux_count = None
        if auxiliary_labels is not None:
            n_classes = max(int(primary_labels.max()), int(auxiliary_labels.max())) + 1
            self.aux_count = torch.bincount(auxiliary_labels, minlength=n_classes)
            missing = sorted(set(primary_labels.unique().tolist()) - set(self.aux_count.nonzero().flatten().tolist()))
            if missing:
                raise DataError(
                    f"the auxiliary training data has no samples of class(es) {missing} present in the primary data",
                    hint="use an auxiliary dataset (or limit) that covers every class.",
                )
            self.aux_order = torch.argsort(auxiliary_labels, stable=True)
            self.aux_start = torch.cumsum(self.aux_count, 0) - self.aux_count

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Positions of the next primary batch and its auxiliary batch (None without auxiliary)."""
        if self.pos + self.batch_size > len(self.perm):
            rest = self.perm[self.pos :]
            self.perm = torch.cat([rest, torch.randperm(self.n_primary, generator=self.generator)])
            self.pos = 0
        primary = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        if self.aux_order is None:
            return primary, None
        y = self.primary_labels[primary]
        reps = math.ceil(self.auxiliary_batch_size / len(y))
        wanted = torch.cat([y.unique(), y.repeat(reps)])[: self.auxiliary_batch_size]
        u = torch.rand(len(wanted), generator=self.generator)
        offset = (u * self.aux_count[wanted]).long()
        return primary, self.aux_order[self.aux_start[wanted] + offset]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state(), "perm": self.perm.clone(), "pos": torch.tensor(self.pos)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])
        self.perm = state["perm"].clone()
        self.pos = int(state["pos"])
