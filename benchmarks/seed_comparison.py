"""Compare methods seed by seed across one or more output dirs of the same recipe and budget.

Every method of a seed trains on the same drawn labelled subset, so the per-seed difference
between two methods cancels the subset's luck. This prints, for the primary test error, each
method's mean ± std and standard error, then each pair's mean per-seed difference ± its
standard error and how many seeds the first method won:

    python benchmarks/seed_comparison.py runs/p12/usps_mnist_100 runs/p14/usps_mnist_100
"""

from __future__ import annotations

import argparse
import json
import statistics
from itertools import combinations
from pathlib import Path

ORDER = ("jade", "paired", "single")


def load_errors(dirs: list[Path]) -> dict[str, dict[int, dict]]:
    """method → seed → final.json of every finished run under the dirs (a seed found twice is an error)."""
    runs: dict[str, dict[int, dict]] = {}
    for d in dirs:
        for path in sorted(d.glob("*/seed-*/final.json")):
            final = json.loads(path.read_text())
            seeds = runs.setdefault(final["method"], {})
            if final["seed"] in seeds:
                raise SystemExit(f"error: {final['method']} seed {final['seed']} appears twice (again in {path})")
            seeds[final["seed"]] = final
    if not runs:
        raise SystemExit(f"error: no finished runs (*/seed-*/final.json) under {', '.join(map(str, dirs))}")
    return runs


def mean_se(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample std and standard error of the mean (std and SE are 0 for one value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, std / len(values) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="output dirs (<dir>/<method>/seed-<n>/final.json)")
    args = parser.parse_args()
    runs = load_errors(args.dirs)
    methods = sorted(runs, key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))
    for m in methods:
        errors = [f["primary_test_error"] for f in runs[m].values()]
        mean, std, se = mean_se(errors)
        line = f"{m:8s} primary {mean:6.2f} ± {std:.2f} (SE {se:.2f}, n = {len(errors)})"
        aux = [f["auxiliary_test_error"] for f in runs[m].values() if f.get("auxiliary_test_error") is not None]
        if aux:
            line += f"   auxiliary {statistics.fmean(aux):.2f} ± {mean_se(aux)[1]:.2f}"
        print(line)
    for a, b in combinations(methods, 2):
        shared = sorted(runs[a].keys() & runs[b].keys())
        if not shared:
            continue
        diffs = [runs[a][s]["primary_test_error"] - runs[b][s]["primary_test_error"] for s in shared]
        mean, _, se = mean_se(diffs)
        wins, ties = sum(d < 0 for d in diffs), sum(d == 0 for d in diffs)
        print(f"{a} - {b}: {mean:+.2f} ± SE {se:.2f} over {len(shared)} seeds; {a} lower on {wins}"
              + (f", {ties} tied" if ties else ""))


if __name__ == "__main__":
    main()
