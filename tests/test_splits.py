"""Seeded stratified subsets, the validation split and the class-matched batch sampler."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from jadekit.config import TrainConfig
from jadekit.data.sampler import PairedBatchSampler
from jadekit.data.splits import stratified_subset, train_val_split
from jadekit.errors import DataError
from jadekit.trainer import make_sampler


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


def test_draws_without_groups_are_pinned():
    """Recorded results depend on these exact indices: the sample-by-sample draws must not change."""
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 0, 2])
    g = gen(3)
    picked = stratified_subset(y, 3, None, g)
    assert picked.tolist() == [17, 3, 11, 4, 2, 15, 6, 0, 10]
    train, val = train_val_split(picked, y, 0.34, g)
    assert (train.tolist(), val.tolist()) == ([3, 6, 4, 10, 2, 17], [0, 15, 11])
    g = gen(5)
    picked = stratified_subset(y, None, 7, g, groups=None)
    assert picked.tolist() == [17, 2, 3, 4, 10, 0, 16]
    train, val = train_val_split(picked, y, 0.5, g, groups=None)
    assert (train.tolist(), val.tolist()) == ([0, 4, 2], [16, 3, 10, 17])


# --- groups (patients): kept whole by both draws ---------------------------------------------


def patients(per_class: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and patient ids: `per_class[c]` patients of class c, each with 2-6 slices, shuffled."""
    rng = torch.Generator().manual_seed(seed)
    labels, groups, pid = [], [], 100
    for c, n in enumerate(per_class):
        for _ in range(n):
            k = int(torch.randint(2, 7, (1,), generator=rng))
            labels += [c] * k
            groups += [pid] * k
            pid += 7  # ids need not be contiguous
    order = torch.randperm(len(labels), generator=rng)
    return torch.tensor(labels)[order], torch.tensor(groups)[order]


Y, G = patients([12, 20, 8])


def whole(picked: torch.Tensor, groups: torch.Tensor) -> bool:
    """Every group is either entirely in `picked` or not at all."""
    chosen = set(groups[picked].tolist())
    return sorted(picked.tolist()) == sorted(i for i, g in enumerate(groups.tolist()) if g in chosen)


@pytest.mark.parametrize(("per_class", "limit"), [(5, None), (10, None), (None, 30), (8, 12), (None, None)])
def test_grouped_subset_keeps_patients_whole(per_class, limit):
    picked = stratified_subset(Y, per_class, limit, gen(1), groups=G)
    assert len(set(picked.tolist())) == len(picked) and whole(picked, G)
    counts = torch.bincount(Y[picked], minlength=3)
    biggest = int(torch.bincount(G).max())
    if per_class is not None and limit is None:  # whole patients until the class count is reached
        assert (counts >= per_class).all() and (counts < per_class + biggest).all()
    if limit is not None:
        assert len(picked) < limit + 3 * biggest
    if per_class is None and limit is None:
        assert sorted(picked.tolist()) == list(range(len(Y)))


def test_grouped_subset_takes_the_fewest_patients():
    y = torch.tensor([0] * 9 + [1] * 9)
    g = torch.arange(18) // 3  # 3 patients of 3 slices per class
    for seed in range(5):
        picked = stratified_subset(y, 4, None, gen(seed), groups=g)
        assert torch.bincount(y[picked]).tolist() == [6, 6]  # 2 patients each: 3 < 4 <= 6


def test_grouped_draws_are_seeded():
    a = stratified_subset(Y, 6, None, gen(2), groups=G)
    assert torch.equal(a, stratified_subset(Y, 6, None, gen(2), groups=G))
    assert set(a.tolist()) != set(stratified_subset(Y, 6, None, gen(3), groups=G).tolist())
    tv = train_val_split(a, Y, 0.3, gen(4), groups=G)
    assert all(torch.equal(x, y) for x, y in zip(tv, train_val_split(a, Y, 0.3, gen(4), groups=G), strict=True))
    splits = {tuple(train_val_split(a, Y, 0.3, gen(s), groups=G)[1].tolist()) for s in range(5)}
    assert len(splits) > 1


@pytest.mark.parametrize("share", [0.01, 0.2, 0.5, 0.99])
def test_no_patient_in_both_train_and_val(share):
    picked = stratified_subset(Y, 10, None, gen(0), groups=G)
    train, val = train_val_split(picked, Y, share, gen(0), groups=G)
    assert sorted(train.tolist() + val.tolist()) == sorted(picked.tolist())
    assert set(G[train].tolist()).isdisjoint(G[val].tolist())
    assert set(Y[train].tolist()) == set(Y[val].tolist()) == {0, 1, 2}  # every class on both sides


def test_grouped_val_share_counts_patients():
    y = torch.tensor([0] * 20 + [1] * 10)
    g = torch.arange(30) // 2  # 10 patients of class 0, 5 of class 1
    train, val = train_val_split(torch.arange(30), y, 0.2, gen(), groups=g)
    val_patients = [len(set(g[val][y[val] == c].tolist())) for c in (0, 1)]
    assert val_patients == [2, 1]  # round(0.2 * 10), max(1, round(0.2 * 5))
    one = torch.tensor([0, 0, 0, 1, 1, 1])
    train, val = train_val_split(torch.arange(6), one, 0.5, gen(), groups=torch.tensor([1, 1, 1, 2, 2, 3]))
    assert sorted(val.tolist()) in ([3, 4], [5])  # class 1: one of its two patients
    assert {0, 1, 2} <= set(train.tolist())  # class 0 is one patient: no validation


def test_mixed_label_group_moves_as_one():
    y = torch.tensor([0, 0, 1, 1, 1, 0, 1, 0])
    g = torch.tensor([1, 1, 1, 2, 3, 4, 5, 6])  # patient 1 is mostly class 0
    for seed in range(6):
        picked = stratified_subset(y, 2, None, gen(seed), groups=g)
        train, val = train_val_split(picked, y, 0.5, gen(seed), groups=g)
        assert whole(picked, g) and set(g[train].tolist()).isdisjoint(g[val].tolist())


def test_grouped_too_few_samples_names_the_class():
    with pytest.raises(DataError, match=r"class 'c' has only 29 samples \(in 8 groups") as err:
        stratified_subset(Y, 30, None, gen(), ("a", "b", "c"), what="primary", groups=G)
    assert "primary" in err.value.message and "29" in err.value.hint


def test_grouped_zero_share_keeps_everything_for_training():
    idx = torch.arange(len(Y))
    train, val = train_val_split(idx, Y, 0.0, gen(), groups=G)
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


@pytest.mark.parametrize(("sampling", "auxiliary"), [
    ("class_matched", [[40, 23, 7, 49, 8, 7, 2], [18, 33, 3, 17, 15, 40, 7]]),
    ("shuffled", [[34, 28, 31, 40, 22, 32, 44], [4, 20, 18, 8, 26, 27, 3]]),
])
def test_default_draws_are_pinned(sampling, auxiliary):
    """The batches every recorded run trained on (docs/results.md): a change to the sampler must leave them be."""
    s = PairedBatchSampler(PRIMARY, AUXILIARY, 6, 7, seed=3, auxiliary_sampling=sampling)
    drawn = [s.next() for _ in range(2)]
    assert [p.tolist() for p, _ in drawn] == [[6, 12, 3, 7, 1, 5], [8, 9, 2, 17, 14, 11]]
    assert [a.tolist() for _, a in drawn] == auxiliary


def test_the_recipe_chooses_the_primary_sampling():
    data = {d: SimpleNamespace(train_y=y) for d, y in (("primary", PRIMARY), ("auxiliary", AUXILIARY))}
    train = TrainConfig(steps=1, primary_sampling="class_balanced", auxiliary_sampling="shuffled")
    sampler = make_sampler(data, train, seed=0)
    assert sampler.primary_by_class is not None and sampler.aux_perm is not None
    assert make_sampler(data, TrainConfig(steps=1), seed=0).primary_by_class is None


def test_class_balanced_primary_sees_rare_classes_as_often_as_common_ones():
    """`train.primary_sampling = "class_balanced"` on a 50:1 imbalanced pool: classes come out about uniformly,
    every image drawn is of the class it stands for, and the auxiliary batches still match the primary classes."""
    labels = torch.cat([torch.zeros(500, dtype=torch.long), torch.ones(10, dtype=torch.long), torch.full((40,), 3)])
    s = PairedBatchSampler(labels, AUXILIARY, batch_size=60, auxiliary_batch_size=60, seed=0,
                           primary_sampling="class_balanced")
    drawn = []
    for _ in range(100):
        p, a = s.next()
        assert set(AUXILIARY[a].tolist()) >= set(labels[p].tolist())
        drawn.append(p)
    counts = torch.bincount(labels[torch.cat(drawn)], minlength=4)
    assert counts[2] == 0  # a class with no images is never asked for
    share = counts[[0, 1, 3]].float() / counts.sum()
    assert (share - 1 / 3).abs().max() < 0.03, share  # 6,000 draws: sd of a share about 0.006
    rare = torch.cat(drawn)[labels[torch.cat(drawn)] == 1]
    assert set(rare.tolist()) == set(range(500, 510))  # every rare image is used
    shuffled = PairedBatchSampler(labels, AUXILIARY, batch_size=60, auxiliary_batch_size=60, seed=0)
    first = labels[torch.cat([shuffled.next()[0] for _ in range(10)])]
    assert torch.bincount(first, minlength=4)[1] < 30  # the default keeps the data's proportions


def test_batch_size_capped_at_pool():
    s = PairedBatchSampler(PRIMARY, None, batch_size=100, auxiliary_batch_size=1, seed=0)
    assert sorted(s.next()[0].tolist()) == list(range(20))


def test_missing_aux_class_is_a_data_error():
    aux = torch.tensor([0, 1, 2, 3, 3])
    with pytest.raises(DataError, match=r"\[4\]"):
        PairedBatchSampler(PRIMARY, aux, 4, 4, seed=0)


@pytest.mark.parametrize("sampling", [{}, {"auxiliary_sampling": "shuffled"}, {"primary_sampling": "class_balanced"}])
def test_state_dict_round_trip_continues_identically(sampling):
    a = PairedBatchSampler(PRIMARY, AUXILIARY, batch_size=6, auxiliary_batch_size=7, seed=5, **sampling)
    for _ in range(9):
        a.next()
    b = PairedBatchSampler(PRIMARY, AUXILIARY, batch_size=6, auxiliary_batch_size=7, seed=99, **sampling)
    b.load_state_dict({k: v.clone() for k, v in a.state_dict().items()})
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
    with pytest.raises(DataError, match="class '4' has no samples at all") as err:
        stratified_subset(y, 2, None, gen(), names)
    assert "at most 0" not in err.value.hint and "data files" in err.value.hint  # no fix that cannot work


def test_absent_middle_class_is_a_data_error():
    y = labels_with_counts([3, 0, 3])
    with pytest.raises(DataError, match="class 'b' has no samples at all"):
        stratified_subset(y, 2, None, gen(), ("a", "b", "c"))
