"""Batched, deterministic prediction and the core classification metrics."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from jadekit.engine.models import Domain
from jadekit.metrics import accuracy, balanced_accuracy, confusion_matrix, error


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → float in [0, 1], channels-last (done per batch; datasets stay uint8 in memory).

    Channels-last lets oneDNN (CPU) and cuDNN (GPU) run the convolutions without layout copies.
    """
    return images.float().div_(255.0).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: torch.Tensor, domain: Domain = "primary", batch_size: int | None = None
) -> torch.Tensor:
    """Class logits for uint8 images (N, C, H, W), in eval mode, on the images' device.

    batch_size: default 128 on CPU, where a batch's activations then stay in cache (2.3x the
    throughput of 1024 on the benchmark machine, docs/results.md), else 1024.
    """
    batch_size = batch_size or (128 if images.device.type == "cpu" else 1024)
    was_training = model.training
    model.eval()
    try:
        out = [model.logits(to_float(images[i : i + batch_size]), domain) for i in range(0, len(images), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).float() if out else torch.empty(0)


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Error (%), accuracy (from the exact count of correct predictions, `jadekit.metrics`), balanced accuracy
    (mean recall over the classes present) and mean negative log-likelihood of predictions."""
    labels = labels.to(logits.device)
    pred = logits.argmax(1)
    nll = F.cross_entropy(logits, labels).item() if len(labels) else float("nan")
    balanced = balanced_accuracy(confusion_matrix(pred.cpu(), labels.cpu(), logits.shape[1]))
    return {"error": error(pred, labels), "accuracy": accuracy(pred, labels), "balanced_accuracy": balanced,
            "nll": nll, "n": len(labels)}
