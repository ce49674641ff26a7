"""Error of trained runs on labelled *training* images that no run drew: the tuning view of docs/results.md.

A run draws a small labelled primary subset (and 45,000 of MNIST's 60,000); the rest of
each training set is labelled data the run never saw and that is not the test set. Scoring
the kept ("best") and the last weights on it gives a tuning signal far less noisy than
20-200 validation images, without touching the test sets. Only the toolkit's own defaults
were chosen this way: a user with a truly scarce dataset has no such pool.

    JADEKIT_DATA=../shared/data python benchmarks/heldout_train_error.py runs/explore/rec03_100 ...
    ... heldout_train_error.py --device cuda --json scores.json runs-gpu/*     # on a GPU, rows kept as JSON
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from jadekit.engine.evaluate import classification_metrics, predict_logits
from jadekit.evaluation import LoadedRun, find_runs, load_run
from jadekit.io import load_checkpoint
from jadekit.runner import DataCache

_CACHES: dict[str, DataCache] = {}  # one per data table, so runs of the same data load it once


def unseen_images(run: LoadedRun, domain: str, drawn: dict[str, list[int]],
                  limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images of `domain` outside the run's drawn train + validation indices (the first `limit` of them)."""
    key = json.dumps([domain, getattr(run.resolved.recipe, domain).model_dump(mode="json")], sort_keys=True)
    data = _CACHES.setdefault(key, DataCache(run.resolved)).split(domain, "train")
    unseen = torch.ones(len(data.labels), dtype=torch.bool)
    unseen[torch.tensor(drawn["train"] + drawn["val"], dtype=torch.long)] = False
    return data.images[unseen][:limit], data.labels[unseen][:limit]


def error(run: LoadedRun, images: torch.Tensor, labels: torch.Tensor, domain: str) -> float:
    return classification_metrics(predict_logits(run.model, images, domain), labels)["error"]


def score_run(run_dir: Path, device: str = "cpu", limit: int | None = None) -> dict[str, float]:
    """Unseen-image error (%) of the kept and of the last weights, per domain the model has."""
    run = load_run(run_dir, device=device)
    drawn = json.loads((run_dir / "indices.json").read_text())
    domains = ("primary", "auxiliary") if run.model.uses_auxiliary else ("primary",)
    sets = {d: tuple(t.to(device) for t in unseen_images(run, d, drawn[d], limit)) for d in domains}
    scores = {f"{d}_kept": error(run, *sets[d], d) for d in domains}
    state, _ = load_checkpoint(run_dir / "checkpoint.pt")
    run.model.load_state_dict(state["model"])  # the last step's weights
    return scores | {f"{d}_last": error(run, *sets[d], d) for d in domains}


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, help="output directories (<dir>/<method>/seed-<n>/)")
    parser.add_argument("--device", default="cpu", help="device to score on (cpu, cuda)")
    parser.add_argument("--json", type=Path, help="also write every run's scores to this JSON file")
    parser.add_argument("--limit", type=positive, help="score only the first N unseen images of each dataset (a quick look; "
                                                  "the recorded numbers score all of them)")
    args = parser.parse_args()
    all_rows: list[dict] = []
    for out_dir in args.dirs:
        by_method: dict[str, list[dict[str, float]]] = {}
        for run_dir in find_runs(out_dir):
            if not (run_dir / "final.json").exists():
                continue  # unfinished
            final = json.loads((run_dir / "final.json").read_text())
            scores = score_run(run_dir, args.device, args.limit)
            by_method.setdefault(final["method"], []).append(scores)
            all_rows.append({"run": str(run_dir), "method": final["method"], "seed": final["seed"], "limit": args.limit}
                            | scores)
            print(f"{run_dir}  kept step {final['best_step']}: " + "  ".join(f"{k} {v:.2f}" for k, v in scores.items()))
        for method, rows in by_method.items():
            means = "  ".join(f"{k} {statistics.mean(r[k] for r in rows):.2f}" for k in rows[0])
            print(f"== {out_dir} {method} (n = {len(rows)}): {means}")
        if args.json:
            args.json.write_text(json.dumps(all_rows, indent=1))


if __name__ == "__main__":
    main()
