"""Pure classification metrics on logits and labels: error, F1, AUROC, calibration, confusion matrix,
and the same per group of images (e.g. per patient).

Shares and percentages of counts (accuracy, error, per-class accuracy) are computed from the integer
counts in Python floats (float64), so 92 errors in 1,000 images give exactly 9.2, without float32 noise.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Counts (n_classes, n_classes): row = true class, column = predicted class."""
    idx = labels.long().cpu() * n_classes + pred.long().cpu()
    return torch.bincount(idx, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def n_correct(pred: torch.Tensor, labels: torch.Tensor) -> int:
    """Number of correct predictions (an exact integer)."""
    return int((pred.long() == labels.to(pred.device).long()).sum().item())


def accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of correct predictions (NaN for no samples)."""
    return n_correct(pred, labels) / len(labels) if len(labels) else math.nan


def error(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Misclassified share in percent, as the paper's Table 1 reports it (NaN for no samples)."""
    return 100.0 * (len(labels) - n_correct(pred, labels)) / len(labels) if len(labels) else math.nan


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


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-d tensor in float64, tied values sharing the mean of their ranks."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()
    return ((last - counts.double() + 1 + last) / 2)[inverse]


def binary_auroc(scores: torch.Tensor, positive: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` for the boolean `positive`: the probability that a random
    positive scores above a random negative, ties counting one half (Mann-Whitney U / (n_pos * n_neg)).

    NaN when there are no positives or no negatives.
    """
    positive = positive.bool().cpu()
    n_pos = int(positive.sum().item())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = average_ranks(scores.double().cpu())[positive].sum().item()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auroc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """AUROC of class scores (logits, or log-probabilities) against the labels.

    Two classes: the binary AUROC of class 1 (scored by logit 1 − logit 0, i.e. by its probability).
    More: the unweighted mean of one-vs-rest AUROCs, each class scored by its log-softmax
    (ranked as its softmax probability, without float32 saturation ties); a class absent from the labels
    (or making up all of them) has no AUROC and is left out. NaN when no class can be scored, or a score is NaN.
    """
    if not len(labels) or logits.ndim != 2 or logits.shape[1] < 2 or torch.isnan(logits).any():
        return math.nan  # NaN scores cannot be ranked
    logits, labels = logits.detach().double().cpu(), labels.long().cpu()
    if logits.shape[1] == 2:
        return binary_auroc(logits[:, 1] - logits[:, 0], labels == 1)
    log_probs = logits.log_softmax(1)
    per_class = [binary_auroc(log_probs[:, c], labels == c) for c in range(logits.shape[1])]
    scored = [a for a in per_class if not math.isnan(a)]
    return sum(scored) / len(scored) if scored else math.nan


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
        "auroc": auroc(logits, labels),
        "ece": expected_calibration_error(logits, labels),
        "nll": nll(logits, labels),
        "per_class_accuracy": dict(zip(class_names, per_class_accuracy(cm), strict=True)),
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }


def group_predictions(
    logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One prediction per group of images (e.g. one per patient): the log of its images' mean predicted probability.

    Returns:
        (log-probabilities (G, C), the groups' labels (G,), the number of groups whose images carry more than one
        label). Groups are in ascending id order; a mixed group's label is its smallest, so callers should check the
        count: a group-level metric is only defined when it is 0.
    """
    ids, inverse = torch.unique(groups.cpu(), return_inverse=True)
    labels = labels.long().cpu()
    log_probs = logits.detach().double().cpu().log_softmax(1)
    # log-mean-exp per group and class, shifted by the group's largest value so tiny probabilities do not underflow
    top = torch.full((len(ids), log_probs.shape[1]), -math.inf, dtype=torch.float64)
    top = top.scatter_reduce(0, inverse.unsqueeze(1).expand_as(log_probs), log_probs, "amax")
    top = top.nan_to_num(neginf=0.0)  # a class no image gives any probability: exp(-inf - 0) = 0 below
    sums = torch.zeros_like(top).index_add_(0, inverse, (log_probs - top[inverse]).exp())
    group_log_probs = sums.div_(torch.bincount(inverse, minlength=len(ids)).unsqueeze(1)).log_() + top
    lowest = torch.full((len(ids),), labels.max().item() + 1 if len(labels) else 0).scatter_reduce(0, inverse, labels, "amin")
    highest = torch.full((len(ids),), -1).scatter_reduce(0, inverse, labels, "amax")
    return group_log_probs, lowest, int((lowest != highest).sum())


def group_report(logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, class_names: tuple[str, ...]) -> dict:
    """`classification_report` of one prediction per group (`group_predictions`), or why there is none."""
    group_logits, group_labels, mixed = group_predictions(logits, labels, groups)
    if mixed:
        return {"n_groups": len(group_labels), "undefined": f"{mixed} of {len(group_labels)} groups hold images of "
                "more than one class, so a group has no single label"}
    return {"n_groups": len(group_labels), **classification_report(group_logits, group_labels, class_names)}
