"""Plot primary test error against labels per class from the summaries of several output dirs.

    python benchmarks/label_curve.py runs/usps_mnist_10 runs/usps_mnist_25 ... --out docs/img/label_curve.png

Each output dir holds `summary.json` (written by `jadekit run`) and `jadekit-output.json`; the
labels per class are read from any run's `recipe.toml`.
"""

from __future__ import annotations

import argparse
import json
import math
import tomllib
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def labels_per_class(out_dir: Path) -> int:
    recipe = next(out_dir.glob("*/seed-*/recipe.toml"))
    return tomllib.loads(recipe.read_text())["primary"]["labels_per_class"]


def seeds_label(ns: tuple[int, ...]) -> str:
    """Seed count for the legend: "5" when every point has 5 seeds, "2–5" when they differ."""
    return str(ns[0]) if min(ns) == max(ns) else f"{min(ns)}–{max(ns)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/img/label_curve.png"))
    args = parser.parse_args()
    points: dict[str, list[tuple[int, float, float, int]]] = {}
    for d in args.dirs:
        n = labels_per_class(d)
        for row in json.loads((d / "summary.json").read_text())["rows"]:
            s = row["primary_test_error"]
            std = math.nan if s["std"] is None else s["std"]  # one seed: no spread
            points.setdefault(row["method"], []).append((n, s["mean"], std, s["n"]))
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for method, pts in points.items():
        pts.sort()
        xs, ys, es, ns = zip(*pts, strict=True)
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=f"{method} (n = {seeds_label(ns)} seeds)")
    ax.set_xscale("log")
    ax.set_xticks(sorted({p[0] for pts in points.values() for p in pts}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set_xlabel("USPS labels per class (primary)")
    ax.set_ylabel("USPS test error (%), mean ± std over seeds")
    ax.set_title("Label budget: USPS (scarce) + 45,000 MNIST (auxiliary)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
