"""Metrics, probes and PCA against values computed by hand on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch

from jadekit import metrics
from jadekit.engine.evaluate import classification_metrics
from jadekit.evaluation import free_suffix
from jadekit.report.latents import linear_probe, normalised, pca2

LABELS = torch.tensor([0, 0, 1, 1, 2])
PRED = torch.tensor([0, 1, 1, 1, 0])


def test_confusion_matrix_rows_are_truth():
    cm = metrics.confusion_matrix(PRED, LABELS, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]


def test_accuracy_error_and_per_class():
    assert metrics.accuracy(PRED, LABELS) == pytest.approx(0.6)
    assert metrics.error(PRED, LABELS) == pytest.approx(40.0)
    cm = metrics.confusion_matrix(PRED, LABELS, 3)
    assert metrics.per_class_accuracy(cm) == pytest.approx([0.5, 1.0, 0.0])
    assert metrics.balanced_accuracy(cm) == pytest.approx(0.5)


def test_macro_f1_by_hand():
    # class 0: tp 1, fp 1, fn 1 -> 0.5; class 1: tp 2, fp 1, fn 0 -> 0.8; class 2: tp 0 -> 0
    cm = metrics.confusion_matrix(PRED, LABELS, 3)
    assert metrics.macro_f1(cm) == pytest.approx((0.5 + 0.8 + 0.0) / 3)


def test_absent_class_is_left_out_of_balanced_accuracy_and_f1():
    cm = metrics.confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 3)
    assert math.isnan(metrics.per_class_accuracy(cm)[2])
    assert metrics.balanced_accuracy(cm) == 1.0
    assert metrics.macro_f1(cm) == 1.0


def _logits(probs: list[list[float]]) -> torch.Tensor:
    return torch.tensor(probs).log()


def test_error_and_accuracy_are_exact_decimals_of_the_counts():
    labels = torch.zeros(1000, dtype=torch.long)
    pred = torch.cat([torch.zeros(908, dtype=torch.long), torch.ones(92, dtype=torch.long)])
    assert metrics.error(pred, labels) == 9.2 and metrics.accuracy(pred, labels) == 0.908  # not 9.200000166893005
    logits = torch.nn.functional.one_hot(pred, 3).float()
    out = classification_metrics(logits, labels)
    assert (out["error"], out["accuracy"], out["n"]) == (9.2, 0.908, 1000)
    assert metrics.classification_report(logits, labels, ("a", "b", "c"))["error"] == 9.2
    for wrong in range(0, 2008, 97):  # USPS test set: 2,007 images
        pred = (torch.arange(2007) < wrong).long()
        assert metrics.error(pred, torch.zeros(2007, dtype=torch.long)) == 100.0 * wrong / 2007
    assert math.isnan(classification_metrics(torch.empty(0, 3), torch.empty(0, dtype=torch.long))["error"])


def _binary(scores: list[float]) -> torch.Tensor:
    """Two-class logits whose class-1 score (logit 1 − logit 0) is `scores`."""
    return torch.stack([torch.zeros(len(scores)), torch.tensor(scores)], dim=1)


def test_binary_auroc_by_hand_with_ties():
    labels = torch.tensor([0, 0, 1, 1])
    assert metrics.auroc(_binary([0.1, 0.2, 0.3, 0.4]), labels) == 1.0
    assert metrics.auroc(_binary([0.4, 0.3, 0.2, 0.1]), labels) == 0.0
    # positive 0.4 beats 0.1 and ties 0.4 (1.5 pairs), positive 0.8 beats both (2): 3.5 of 4 pairs
    assert metrics.auroc(_binary([0.1, 0.4, 0.4, 0.8]), labels) == 0.875
    assert metrics.auroc(_binary([0.5] * 4), labels) == 0.5
    # ranks 1, 2.5, 2.5, 4.5, 4.5, 6 (average over ties); positives 2.5 + 4.5 + 6 = 13 -> U = 13 - 6 = 7 of 9
    assert metrics.auroc(_binary([0, 1, 1, 2, 2, 3]), torch.tensor([0, 1, 0, 1, 0, 1])) == pytest.approx(7 / 9)
    assert metrics.binary_auroc(torch.tensor([1.0, 1.0, 2.0]), torch.tensor([False, True, True])) == 0.75


def test_auroc_ranks_probabilities_not_raw_logits():
    # class 1's logit is higher for the negative, but its probability is lower: only 1 - 0 counts
    logits = torch.tensor([[9.0, 5.0], [0.0, 1.0]])
    assert metrics.auroc(logits, torch.tensor([0, 1])) == 1.0
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(50, 4, generator=g), torch.randint(0, 4, (50,), generator=g)
    shifted = logits + torch.randn(50, 1, generator=g) * 10  # a row's constant leaves its probabilities alone
    assert metrics.auroc(shifted, labels) == pytest.approx(metrics.auroc(logits, labels), abs=1e-12)
    assert metrics.auroc(logits.log_softmax(1), labels) == pytest.approx(metrics.auroc(logits, labels), abs=1e-12)


def test_multiclass_auroc_is_the_mean_over_classes_present():
    # probabilities: (2, 0, 0, 0) -> .711/.096/.096/.096; zeros -> .25 each; (0, -1, 0, 0) -> .297/.109/.297/.297
    logits = torch.tensor([[2.0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, -1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])  # class 3 never occurs: left out
    # class 0: positives .711 (4 wins), .25 (ties .25 twice, beats .096): 6/8
    # class 1: positives .25 (beats two .096, ties two .25) and .109 (beats two .096): 5/8
    # class 2: positives .711 (4 wins), .25 (beats .096, ties .25 twice): 6/8
    assert metrics.auroc(logits, labels) == pytest.approx((6 / 8 + 5 / 8 + 6 / 8) / 3)


def test_auroc_is_nan_when_no_class_can_be_scored():
    assert math.isnan(metrics.auroc(_binary([0.1, 0.9]), torch.tensor([1, 1])))
    assert math.isnan(metrics.auroc(torch.randn(3, 4), torch.tensor([2, 2, 2])))
    assert math.isnan(metrics.auroc(torch.empty(0, 3), torch.empty(0, dtype=torch.long)))
    assert math.isnan(metrics.classification_report(torch.randn(2, 3), torch.tensor([1, 1]), ("a", "b", "c"))["auroc"])


def test_auroc_matches_the_mann_whitney_u_of_scipy():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 8, (300,), generator=g).double()  # many ties
    positive = torch.rand(300, generator=g) < 0.3
    u = stats.mannwhitneyu(scores[positive].numpy(), scores[~positive].numpy()).statistic
    expected = u / (positive.sum().item() * (~positive).sum().item())
    assert metrics.binary_auroc(scores, positive) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_auroc_matches_sklearn_on_random_data(n_classes):
    skm = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(n_classes)
    labels = torch.randint(0, n_classes, (400,), generator=g)
    logits = torch.randn(400, n_classes, generator=g) + 0.8 * torch.nn.functional.one_hot(labels, n_classes)
    probs = logits.double().softmax(1).numpy()
    if n_classes == 2:
        expected = skm.roc_auc_score(labels.numpy(), probs[:, 1])
    else:
        expected = skm.roc_auc_score(labels.numpy(), probs, multi_class="ovr", average="macro")
    assert metrics.auroc(logits, labels) == pytest.approx(expected, abs=1e-9)
    rounded = (logits * 2).round() / 2  # ties
    tied = rounded.double().softmax(1).numpy()
    if n_classes == 2:
        assert metrics.auroc(rounded, labels) == pytest.approx(skm.roc_auc_score(labels.numpy(), tied[:, 1]), abs=1e-9)


def test_ece_and_nll_by_hand():
    logits = _logits([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = torch.tensor([0, 1, 1, 1])
    # bin ~0.9: accuracy 0.5 vs confidence 0.9; bin ~0.6: accuracy 1 vs 0.6; each half the samples
    assert metrics.expected_calibration_error(logits, labels, n_bins=10) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4, abs=1e-6)
    expected = -(math.log(0.9) + math.log(0.1) + 2 * math.log(0.6)) / 4
    assert metrics.nll(logits, labels) == pytest.approx(expected, abs=1e-6)


def test_ece_is_zero_when_confident_and_right():
    logits = torch.tensor([[20.0, -20.0], [-20.0, 20.0]])
    assert metrics.expected_calibration_error(logits, torch.tensor([0, 1])) == pytest.approx(0.0, abs=1e-6)


def test_empty_inputs_give_nan_not_errors():
    empty = torch.empty(0, dtype=torch.long)
    assert math.isnan(metrics.accuracy(empty, empty))
    assert math.isnan(metrics.expected_calibration_error(torch.empty(0, 3), empty))
    assert math.isnan(metrics.nll(torch.empty(0, 3), empty))


def test_classification_report_is_consistent():
    logits = torch.nn.functional.one_hot(PRED, 3).float() * 5
    r = metrics.classification_report(logits, LABELS, ("a", "b", "c"))
    assert r["n"] == 5 and r["error"] == pytest.approx(40.0)
    assert r["per_class_accuracy"] == pytest.approx({"a": 0.5, "b": 1.0, "c": 0.0})
    assert r["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # rows predicting the same class are identical, so tie: class 0 3.5/6, class 1 5/6, class 2 3/6 (all tied)
    assert r["auroc"] == pytest.approx((3.5 / 6 + 5 / 6 + 0.5) / 3)


def test_linear_probe_with_groups_keeps_each_group_on_one_side():
    """Images of one patient look alike: a probe split image by image learns the patient, not the class, and scores
    as if it could tell the classes apart; split by patient it cannot."""
    g = torch.Generator().manual_seed(0)
    patients = torch.arange(40).repeat_interleave(5)  # 40 patients, 5 images each
    x = torch.nn.functional.one_hot(patients, 40).double() + 0.01 * torch.randn(200, 40, generator=g, dtype=torch.double)
    y = torch.randint(0, 2, (40,), generator=g)[patients]  # a label per patient, unrelated to anything in x
    assert linear_probe(x, y)["accuracy"] > 0.95  # leaked: the held-out half holds the same patients
    by_patient = linear_probe(x, y, groups=patients)
    assert by_patient["accuracy"] <= by_patient["chance"] + 0.1 and by_patient["n_train"] % 5 == 0  # no better than chance
    assert 80 <= by_patient["n_train"] <= 120
    few = torch.arange(4).repeat_interleave(6)  # 2 patients per class, as a small MRI cohort's test split
    labels = (few >= 2).long()
    separable = labels[:, None].double() * 6 + torch.randn(24, 2, generator=g, dtype=torch.double)
    for seed in range(4):  # every draw trains on one patient of each class and scores the other two
        split = linear_probe(separable, labels, seed, groups=few)
        assert split["accuracy"] == 1.0 and split["n_train"] == 12 and split["chance"] == 0.5
    one = linear_probe(separable, labels, groups=torch.zeros(24, dtype=torch.long))  # nothing can be held out
    assert math.isnan(one["accuracy"]) and math.isnan(one["chance"])


def test_report_probe_groups_stay_distinct_across_datasets():
    from jadekit.report.build import _probe_groups

    picked = {"primary": torch.tensor([0, 2, 3]), "auxiliary": torch.tensor([0, 1])}
    assert _probe_groups({"primary": None, "auxiliary": None}, picked) is None
    ids = _probe_groups({"primary": torch.tensor([7, 7, 9, 9]), "auxiliary": None}, picked)
    assert ids["primary"].tolist() == [0, 1, 1]  # patient 7, then 9 twice
    assert ids["auxiliary"].tolist() == [2, 3]  # no patients: each image its own group, none shared with the primary


def test_linear_probe_separable_and_random():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = torch.randn(200, 3, generator=g) + 6 * y[:, None].float()
    assert linear_probe(x, y)["accuracy"] == 1.0
    noise = linear_probe(torch.randn(400, 3, generator=g), torch.arange(400) % 2)
    assert noise["accuracy"] < 0.65 and noise["chance"] >= 0.5 and noise["n_train"] == 200


def test_pca_of_a_line_has_one_component():
    t = torch.linspace(-1, 1, 50)
    x = torch.stack([t, 2 * t, -t], dim=1)
    xy, share = pca2(x)
    assert share[0] == pytest.approx(1.0, abs=1e-6)
    assert xy[:, 1].abs().max() < 1e-4


def test_normalised_has_unit_std():
    z = torch.randn(100, 4) * torch.tensor([1.0, 10.0, 0.1, 3.0]) + 5
    n = normalised(z)
    assert n.std(0) == pytest.approx(torch.ones(4), abs=1e-5)


def test_free_suffix_never_overwrites_any_of_the_files_it_names(tmp_path):
    paths = [tmp_path / "eval-summary-usps-test.md", tmp_path / "run" / "eval-usps-test.json"]
    (tmp_path / "run").mkdir()
    assert free_suffix(paths) == ""
    paths[0].write_text("x")
    assert free_suffix(paths) == "-2"
    (tmp_path / "run" / "eval-usps-test-2.json").write_text("{}")  # taken for one file: taken for all
    assert free_suffix(paths) == "-3"


def test_auroc_of_nan_scores_is_nan():
    from jadekit.metrics import auroc

    logits = torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [1.0, 0.0]])
    assert math.isnan(auroc(logits, torch.tensor([1, 0, 0])))


def test_group_prediction_is_the_mean_probability_of_its_images():
    """Patient 7's two images (p = 0.95 and 0.12 for class 0) average to 0.535: class 0, though a vote of its
    images is a tie; patient 9's images are both class 1."""
    p0 = torch.tensor([0.95, 0.12, 0.30, 0.40, 0.20])
    logits = torch.stack([p0, 1 - p0], 1).log()
    labels = torch.tensor([0, 0, 1, 1, 1])
    groups = torch.tensor([7, 7, 3, 9, 9])
    log_probs, group_labels, mixed = metrics.group_predictions(logits, labels, groups)
    assert mixed == 0 and group_labels.tolist() == [1, 0, 1]  # groups in id order: 3, 7, 9
    assert log_probs.exp()[:, 0].tolist() == pytest.approx([0.30, 0.535, 0.30])
    report = metrics.group_report(logits, labels, groups, ("a", "b"))
    assert report["n_groups"] == report["n"] == 3 and report["error"] == 0.0
    assert metrics.group_report(logits, torch.tensor([0, 1, 1, 1, 1]), groups, ("a", "b")) == {
        "n_groups": 3, "undefined": "1 of 3 groups hold images of more than one class, so a group has no single label"}


def test_group_prediction_of_confident_mistakes_stays_finite():
    """Probabilities far below float64's range (logit gaps of 1,000) are averaged in log space: the group's NLL is
    about 1,000 nats, as its images', not infinite."""
    logits = torch.tensor([[1000.0, 0.0], [1001.0, 0.0]])
    log_probs, _, _ = metrics.group_predictions(logits, torch.tensor([1, 1]), torch.tensor([4, 4]))
    assert torch.isfinite(log_probs).all()
    assert -log_probs[0, 1].item() == pytest.approx(1000 - math.log((1 + math.exp(-1)) / 2), abs=1e-9)
    assert metrics.group_report(logits, torch.tensor([1, 1]), torch.tensor([4, 4]), ("a", "b"))["nll"] < 1001


def test_validation_metrics_include_balanced_accuracy():
    """`classification_metrics` (what validation records and `select = "val_balanced_accuracy"` ranks): the mean
    recall over the classes present, here 9 of 10 class-0 images right and 0 of 2 class-1 ones, class 2 absent."""
    labels = torch.tensor([0] * 10 + [1, 1])
    logits = torch.zeros(12, 3)
    logits[:9, 0] = logits[9, 2] = logits[10:, 0] = 1.0
    m = classification_metrics(logits, labels)
    assert m["accuracy"] == pytest.approx(9 / 12) and m["balanced_accuracy"] == pytest.approx((0.9 + 0.0) / 2)
