"""Metrics, probes and PCA against values computed by hand on tiny inputs."""

from __future__ import annotations

import math

import pytest
import torch

from jadekit import metrics
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
