"""Merge the runs of several output dirs (same recipe and budget, different seeds) into one summary.

`jadekit run` summarises one output dir; a study whose seeds ran in separate dirs (e.g. seeds
0-4, then 5-9) is summarised here the same way: each method's mean ± std, and the per-seed
differences between methods (each seed's methods share one labelled draw, so the difference
cancels that draw's luck):

    python benchmarks/seed_comparison.py runs/p12/usps_mnist_100 runs/p14/usps_mnist_100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jadekit.summary import summary_markdown


def load_finals(dirs: list[Path]) -> list[dict]:
    """final.json of every finished run under the dirs; a method's seed found twice is an error."""
    finals, seen = [], {}
    for d in dirs:
        for path in sorted(d.glob("*/seed-*/final.json")):
            final = json.loads(path.read_text())
            key = (final["method"], final["seed"])
            if key in seen:
                raise SystemExit(f"error: {key[0]} seed {key[1]} appears twice ({seen[key]} and {path})")
            seen[key] = path
            finals.append(final)
    if not finals:
        raise SystemExit(f"error: no finished runs (*/seed-*/final.json) under {', '.join(map(str, dirs))}")
    return finals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="output dirs (<dir>/<method>/seed-<n>/final.json)")
    args = parser.parse_args()
    finals = load_finals(args.dirs)
    print(summary_markdown(finals, " + ".join(map(str, args.dirs))), end="")


if __name__ == "__main__":
    main()
