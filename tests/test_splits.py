"""Seeded stratified subsets, the validation split and the class-matched batch sampler."""

from __future__ import annotations

import pytest
import torch

from jadekit.data.sampler import PairedBatchSampler
from jadekit.data.splits import stratified_subset, train_val_split
from jadekit.errors import DataError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def labels_with_counts(counts: list[int], seed: int = 0) -> torch.Tensor:
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return y[torch.randperm(len(y), generator=gen(seed))]


LABELS = labels_with_counts([30, 50, 20, 40])


# --- stratified_subset -----------------------------------------------------------------------


def test_exact_per_class_counts_and_unique_indices():
    picked = stratified_subset(LABELS, 7, None, gen())
    assert torch.bincount(LABELS[picked], minlength=4).tolist() == [7, 7, 7, 7]
    assert len(set(picked.tolist())) == len(picked) == 28


def test_seeded_determinism_and_seeds_differ():
    a = stratified_subset(LABELS, 5, None, gen(1))
    assert torch.equal(a, stratified_subset(LABELS, 5, None, gen(1)))
    assert set(a.tolist()) != set(stratified_subset(LABELS, 5, None, gen(2)).tolist())


def test_no_bounds_returns_everything_shuffled():
    picked = stratified_subset(LABELS, None, None, gen())
    assert sorted(picked.tolist()) == list(range(len(LABELS)))
    assert picked.tolist() != list(range(len(LABELS)))


@pytest.mark.parametrize(("limit", "expected"), [(70, [15, 25, 10, 20]), (14, [3, 5, 2, 4]), (10, [2, 4, 1, 3])])
def test_limit_keeps_proportions(limit, expected):
    picked = stratified_subset(LABELS, None, limit, gen())
    assert len(picked) == limit
    counts = torch.bincount(LABELS[picked], minlength=4).tolist()
    assert sum(counts) == limit
    # largest remainders: each class within one of its exact share
    for c, n in enumerate([30, 50, 20, 40]):
        assert abs(counts[c] - n * limit / 140) < 1
    assert counts == expected


def test_limit_after_per_class():
    picked = stratified_subset(LABELS, 10, 20, gen())
    assert torch.bincount(LABELS[picked], minlength=4).tolist() == [5, 5, 5, 5]


def test_limit_above_total_is_no_cap():
    assert len(stratified_subset(LABELS, 3, 1000, gen())) == 12


def test_too_few_samples_in_a_class_names_the_class():
    names = ("zero", "one", "two", "three")
    with pytest.raises(DataError, match="class 'two' has only 20 samples") as err:
        stratified_subset(LABELS, 25, None, gen(), names, what="primary")
    assert "primary" in err.value.message and "labels_per_class = 25" in err.value.message
    assert "20" in err.value.hint
    with pytest.raises(DataError, match="class '2' has only 20"):  # without names: the index
        stratified_subset(LABELS, 25, None, gen())


# --- train_val_split -------------------------------------------------------------------------


def test_train_val_split_disjoint_and_stratified():
    picked = stratified_subset(LABELS, 10, None, gen())
    train, val = train_val_split(picked, LABELS, 0.2, gen())
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == sorted(picked.tolist())
    assert torch.bincount(LABELS[val], minlength=4).tolist() == [2, 2, 2, 2]
    assert torch.bincount(LABELS[train], minlength=4).tolist() == [8, 8, 8, 8]


def test_train_val_split_seeded():
    picked = stratified_subset(LABELS, 10, None, gen())
    a = train_val_split(picked, LABELS, 0.3, gen(4))
    b = train_val_split(picked, LABELS, 0.3, gen(4))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("share", [0.01, 0.5, 0.99])
def test_every_class_keeps_a_training_sample(share):
    y = labels_with_counts([1, 2, 3, 9])
    idx = torch.arange(len(y))
    train, val = train_val_split(idx, y, share, gen())
    assert set(y[train].tolist()) == {0, 1, 2, 3}
    val_classes = torch.bincount(y[val], minlength=4).tolist()
    assert val_classes[0] == 0 and all(n >= 1 for n in val_classes[1:])  # a class of 2+ gives one to validation


def test_zero_share_keeps_everything_for_training():
    idx = torch.arange(10)
    train, val = train_val_split(idx, LABELS, 0.0, gen())
    assert torch.equal(train, idx) and len(val) == 0


# --- PairedBatchSampler ----------------------------------------------------------------------


PRIMARY = labels_with_counts([6, 3, 5, 4, 2], seed=1)  # 20 samples, 5 classes
AUXILIARY = labels_with_counts([10, 20, 5, 8, 7], seed=2)


def test_aux_batches_hold_every_primary_class():
    s = PairedBatchSampler(PRIMARY, AUXILIARY, batch_size=6, auxiliary_batch_size=8, seed=0)
    for _ in range(30):
        p, a = s.next()
        assert len(p) == 6 and len(a) == 8
        assert set(PRIMARY[p].tolist()) <= set(AUXILIARY[a].tolist())


def test_small_aux_batch_still_covers_primary_classes():
    s = PairedBatchSampler(PRIMARY, AUXILIARY, batch_size=8, auxiliary_batch_size=5, seed=3)
    for _ in range(20):
        p, a = s.next()
        assert set(PRIMARY[p].tolist()) <= set(AUXILIARY[a].tolist())


def test_aux_labels_follow_primary_labels():
    """Beyond one of each class, the auxiliary batch repeats the primary batch's labels."""
    s = PairedBatchSampler(PRIMARY, AUXILIARY, batch_size=4, auxiliary_batch_size=12, seed=0)
    for _ in range(10):
        p, a = s.next()
        y, ya = PRIMARY[p], AUXILIARY[a]
        wanted = torch.cat([y.unique(), y.repeat(3)])[:12]
        assert sorted(ya.tolist()) == sorted(wanted.tolist())


def test_epoch_covers_every_primary_sample():
    s = PairedBatchSampler(PRIMARY, None, batch_size=6, auxiliary_batch_size=6, seed=0)
    seen = []
    for _ in range(4):  # ceil(20 / 6) batches
        p, a = s.next()
        assert a is None
        seen += p.tolist()
    assert set(seen) == set(range(20))
    exact = PairedBatchSampler(PRIMARY, AUXILIARY, batch_size=5, auxiliary_batch_size=5, seed=1)
    first_epoch = torch.cat([exact.next()[0] for _ in range(4)])
    assert sorted(first_epoch.tolist()) == list(range(20))


def test_shuffled_auxiliary_reads_its_pool_epoch_by_epoch():
    """`train.auxiliary_sampling = "shuffled"`: every auxiliary sample once per epoch, classes as they come."""
    s = PairedBatchSampler(PRIMARY, AUXILIARY, batch_size=6, auxiliary_batch_size=10, seed=0, auxiliary_sampling="shuffled")
    first_epoch = torch.cat([s.next()[1] for _ in range(5)])  # 50 = len(AUXILIARY)
    assert sorted(first_epoch.tolist()) == list(range(50))
    big = PairedBatchSampler(PRIMARY, AUXILIARY, batch_size=6, auxiliary_batch_size=120, seed=0, auxiliary_sampling="shuffled")
    a = big.next()[1]  # larger than the pool: whole epochs, then part of the next
    assert len(a) == 120 and torch.bincount(a, minlength=50).min() == 2


def test_shuffled_state_dict_round_trip_continues_identically():
    a = PairedBatchSampler(PRIMARY, AUXILIARY, 6, 7, seed=5, auxiliary_sampling="shuffled")
    for _ in range(9):
        a.next()
    b = PairedBatchSampler(PRIMARY, AUXILIARY, 6, 7, seed=99, auxiliary_sampling="shuffled")
    b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
    for _ in range(10):
        (pa, aa), (pb, ab) = a.next(), b.next()
        assert torch.equal(pa, pb) and torch.equal(aa, ab)


def test_batch_size_capped_at_pool():
    s = PairedBatchSampler(PRIMARY, None, batch_size=100, auxiliary_batch_size=1, seed=0)
    assert sorted(s.next()[0].tolist()) == list(range(20))


def test_missing_aux_class_is_a_data_error():
    aux = torch.tensor([0, 1, 2, 3, 3])
    with pytest.raises(DataError, match=r"\[4\]"):
        PairedBatchSampler(PRIMARY, aux, 4, 4, seed=0)


def test_state_dict_round_trip_continues_identically():
    a = PairedBatchSampler(PRIMARY, AUXILIARY, batch_size=6, auxiliary_batch_size=7, seed=5)
    for _ in range(5):
        a.next()
    state = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in a.state_dict().items()}
    b = PairedBatchSampler(PRIMARY, AUXILIARY, batch_size=6, auxiliary_batch_size=7, seed=99)
    b.load_state_dict(state)
    for _ in range(10):
        (pa, aa), (pb, ab) = a.next(), b.next()
        assert torch.equal(pa, pb) and torch.equal(aa, ab)


def test_same_seed_same_batches_different_seed_differs():
    def draws(seed: int) -> list[list[int]]:
        s = PairedBatchSampler(PRIMARY, AUXILIARY, 6, 6, seed)
        return [torch.cat(s.next()).tolist() for _ in range(3)]

    assert draws(0) == draws(0)
    assert draws(0) != draws(1)


def test_class_without_any_sample_is_a_data_error():
    names = tuple(str(d) for d in range(5))
    y = labels_with_counts([3, 3, 3, 3])  # class '4' is declared but absent
    with pytest.raises(DataError, match="class '4' has only 0 samples"):
        stratified_subset(y, 2, None, gen(), names)


def test_absent_middle_class_is_a_data_error():
    y = labels_with_counts([3, 0, 3])
    with pytest.raises(DataError, match="class 'b' has only 0 samples"):
        stratified_subset(y, 2, None, gen(), ("a", "b", "c"))
