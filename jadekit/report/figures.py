"""The report's figures, each a function from tensors/records to a saved PNG (matplotlib, Agg)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

DPI = 90


def _save(fig, path: Path) -> Path:
    """Write a 256-colour PNG: a few times smaller than RGBA and indistinguishable for plots."""
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    buf.seek(0)
    Image.open(buf).convert("RGB").quantize(256).save(path, optimize=True)
    return path


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (curves of per-step losses are noisy)."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def training_curves(records: list[dict], path: Path) -> Path:
    """One panel per loss term (raw and smoothed) plus validation accuracy."""
    train = [r for r in records if r.get("kind") == "train"]
    val = [r for r in records if r.get("kind") == "val"]
    terms = [k for k in (train[0] if train else {}) if k not in ("step", "kind") and isinstance(train[0][k], int | float)]
    panels = terms + ["val accuracy"]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.6 * rows), squeeze=False)
    window = max(1, len(train) // 50)
    for ax, name in zip(axes.flat, panels, strict=False):
        if name == "val accuracy":
            ax.plot([r["step"] for r in val], [r.get("accuracy") for r in val], marker="o", ms=3, color="tab:green")
            ax.set_ylabel("accuracy")
        else:
            steps = [r["step"] for r in train]
            values = [r[name] for r in train]
            ax.plot(steps, values, color="tab:blue", alpha=0.25, lw=0.8)
            ax.plot(steps, _smooth(values, window), color="tab:blue", lw=1.5)
            ax.set_ylabel("loss")
            if values and min(values) > 0 and max(values) / min(values) > 50:
                ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.suptitle("training curves (light: per step, dark: moving average)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def latent_heatmaps(panels: list[tuple[str, torch.Tensor]], content_dim: int, path: Path) -> Path:
    """Fig. 2: variance-normalised latent activations, one heatmap (samples x dims) per panel."""
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.0 * rows), squeeze=False, layout="constrained")
    im = None
    for ax, (title, z) in zip(axes.flat, panels, strict=False):
        im = ax.imshow(z.numpy(), aspect="auto", cmap="coolwarm", vmin=-3, vmax=3, interpolation="nearest")
        ax.axvline(content_dim - 0.5, color="black", lw=1.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"latent dim (0-{content_dim - 1} content | style)", fontsize=8)
        ax.set_ylabel("sample", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.6, label="activation / std over all samples")
    fig.suptitle("Fig. 2: normalised latent activations (content dims should be flat within a class)", fontsize=11)
    return _save(fig, path)


def dim_variance(within: torch.Tensor, content_dim: int, path: Path) -> Path:
    """Mean within-class variance of each normalised dim (1 = as variable as across all classes)."""
    fig, ax = plt.subplots(figsize=(7, 3))
    colors = ["tab:orange" if i < content_dim else "tab:blue" for i in range(len(within))]
    ax.bar(range(len(within)), within.numpy(), color=colors)
    ax.axhline(1.0, color="gray", ls="--", lw=1)
    ax.set_xlabel("latent dim (orange: content, blue: style)")
    ax.set_ylabel("within-class variance")
    ax.set_title("variance of each normalised latent dim within a class (mean over classes)", fontsize=10)
    ax.set_xticks(range(len(within)))
    return _save(fig, path)


def _mosaic(images: torch.Tensor, size: int) -> torch.Tensor:
    """(N, C, H, W) in [0, 1] → one row image (C, size, N * size)."""
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)
    return torch.cat(list(x), dim=2)


def _show(ax, img: torch.Tensor) -> None:
    arr = img.permute(1, 2, 0).numpy()
    ax.imshow(arr[..., 0] if arr.shape[2] == 1 else arr, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def reconstructions(pairs: list[tuple[str, torch.Tensor, torch.Tensor]], path: Path, size: int = 28) -> Path:
    """Per dataset: test images (top row) and their reconstructions (bottom row)."""
    fig, axes = plt.subplots(len(pairs), 1, figsize=(0.6 * len(pairs[0][1]) + 1, 1.5 * len(pairs)), squeeze=False)
    for ax, (name, x, r) in zip(axes[:, 0], pairs, strict=True):
        _show(ax, torch.cat([_mosaic(x, size), _mosaic(r, size)], dim=1))
        ax.set_ylabel("input\nrecon.", fontsize=8)
        ax.set_title(f"{name}: test images (top) and reconstructions (bottom)", fontsize=9)
    return _save(fig, path)


def _channels(t: torch.Tensor, c: int) -> torch.Tensor:
    """Grey → RGB by repetition when the two datasets differ in channels."""
    return t.expand(-1, c, -1, -1) if t.shape[1] != c else t


def swap_grid(panels: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]], path: Path, size: int = 28) -> Path:
    """Each panel: style sources along the top, content sources down the left, decoded mixes inside."""
    cols = 2
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.6 * rows), squeeze=False)
    for ax, (title, content_x, style_x, mixed) in zip(axes.flat, panels, strict=False):
        n_c, n_s = len(content_x), len(style_x)
        c = content_x.shape[1] if content_x.shape[1] == style_x.shape[1] == mixed.shape[2] else 3
        grid = [torch.cat([torch.full((c, size, size), 0.5), _mosaic(_channels(style_x, c), size)], dim=2)]
        for i in range(n_c):
            row = [_mosaic(_channels(content_x[i : i + 1], c), size), _mosaic(_channels(mixed[i], c), size)]
            grid.append(torch.cat(row, dim=2))
        _show(ax, torch.cat(grid, dim=1))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"style source ({n_s} images, top row)", fontsize=8)
        ax.set_ylabel(f"content source ({n_c} images, left column)", fontsize=8)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def probe_bars(probes: dict[str, dict[str, float]], path: Path) -> Path:
    """Held-out accuracy of each linear probe, with its chance level."""
    names = list(probes)
    fig, ax = plt.subplots(figsize=(1.9 * len(names) + 1.5, 3.2))
    acc = [probes[n]["accuracy"] for n in names]
    bars = ax.bar(range(len(names)), acc, color="tab:purple", width=0.6)
    for i, n in enumerate(names):
        ax.hlines(probes[n]["chance"], i - 0.3, i + 0.3, colors="black", linestyles="--", label="chance" if i == 0 else None)
    ax.bar_label(bars, labels=["n/a" if math.isnan(a) else f"{a:.2f}" for a in acc], fontsize=8)  # NaN: too few groups
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("held-out accuracy")
    ax.set_title("linear probes on test latents", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def pca_scatter(xy: torch.Tensor, share: list[float], labels: torch.Tensor, class_names: tuple[str, ...],
                origin: torch.Tensor, dataset_names: list[str], what: str, path: Path) -> Path:
    """2-D PCA coloured by class (left) and, when there are two datasets, by dataset of origin (right)."""
    panels = [(labels, class_names, "tab10", "by class"), (origin, dataset_names, "Set1", "by dataset")]
    panels = panels[: 1 if len(dataset_names) < 2 else 2]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    for ax, (colour, names, cmap, title) in zip(axes[0], panels, strict=True):
        cm = plt.get_cmap(cmap)
        for k, name in enumerate(names):
            m = colour == k
            if m.any():
                ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.6, color=cm(k % cm.N), label=name)
        ax.set_xlabel(f"PC 1 ({100 * share[0]:.0f}% of variance)")
        ax.set_ylabel(f"PC 2 ({100 * share[1]:.0f}% of variance)")
        ax.set_title(f"PCA of {what}, {title}", fontsize=10)
        ax.legend(fontsize=7, markerscale=2, loc="best", ncol=2 if len(names) > 5 else 1)
    fig.tight_layout()
    return _save(fig, path)
