"""Pure classification metrics on logits and labels: error, F1, calibration, confusion matrix."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    idx = labels.long().cpu() * n_classes + pred.long().cpu()
    return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of correct predictions (NaN for no samples)."""
    return (pred.cpu() == labels.cpu()).float().mean().item() if len(labels) else math.nan


def error(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Misclassified share in percent, as the paper's Table 1 reports it."""
    return 100.0 * (1.0 - accuracy(pred, labels))


def per_class_accuracy(cm: torch.Tensor) -> list[float]:
    """Recall of each class (NaN for a class with no samples)."""
    support = cm.sum(1)
    return [cm[c, c].item() / support[c].item() if support[c] else math.nan for c in range(len(cm))]


def balanced_accuracy(cm: torch.Tensor) -> float:
    """Mean recall over the classes that have samples (robust to class imbalance)."""
    recalls = [r for r in per_class_accuracy(cm) if not math.isnan(r)]
    return sum(recalls) / len(recalls) if recalls else math.nan


def macro_f1(cm: torch.Tensor) -> float:
    """Unweighted mean F1 over classes that occur as truth or prediction.

    A class that is never true nor predicted is left out; one that is predicted but
    never right (or never predicted) scores 0.
    """
    tp = cm.diag().double()
    fp = cm.sum(0).double() - tp
    fn = cm.sum(1).double() - tp
    present = (tp + fp + fn) > 0
    if not present.any():
        return math.nan
    f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
    return f1[present].mean().item()


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE: |accuracy - mean confidence| per equal-width confidence bin, weighted by bin share.

    Bins are (k/n, (k+1)/n] on the top-class softmax probability.
    """
    if not len(labels):
        return math.nan
    probs = logits.float().softmax(1).cpu()
    conf, pred = probs.max(1)
    correct = (pred == labels.cpu()).float()
    bins = (conf * n_bins).ceil().clamp(1, n_bins).long() - 1
    ece = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            ece += mask.float().mean().item() * abs(correct[mask].mean().item() - conf[mask].mean().item())
    return ece


def nll(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood (cross-entropy, nats) of the true class."""
    return F.cross_entropy(logits.float().cpu(), labels.cpu()).item() if len(labels) else math.nan


def classification_report(logits: torch.Tensor, labels: torch.Tensor, class_names: tuple[str, ...]) -> dict:
    """Every metric above as one JSON-safe dict."""
    pred = logits.argmax(1).cpu()
    labels = labels.cpu()
    cm = confusion_matrix(pred, labels, len(class_names))
    return {
        "n": len(labels),
        "error": error(pred, labels),
        "accuracy": accuracy(pred, labels),
        "balanced_accuracy": balanced_accuracy(cm),
        "macro_f1": macro_f1(cm),
        "ece": expected_calibration_error(logits, labels),
        "nll": nll(logits, labels),
        "per_class_accuracy": dict(zip(class_names, per_class_accuracy(cm), strict=True)),
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }
