"""The least time the usps_mnist protocol could take on this machine, at a given step budget.

Each method's training FLOPs per step (forward + backward, counted by torch's FlopCounterMode on
the protocol's recipe and batch shapes) times the step budget, summed over the protocol's runs
(3 methods x seeds x label budgets), divided by this machine's measured dense-convolution peak
(`throughput.conv_peak_gflops`): one thread's peak times the cores, as the protocol runs one
single-threaded process per core, or all threads' peak in one process if that is higher. No run of these small layers reaches that
peak (jade trains at 37-48 % of it: docs/results.md, Speed), and validation, evaluation and data
are left out, so the real protocol always takes longer: the floor says which step budgets no
amount of engineering can fit into an hour here.

    python benchmarks/protocol_floor.py [--steps 6000 24000] [--seeds 5] [--budgets 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from throughput import METHODS, RECIPE, conv_peak_gflops, step_flops  # beside this script

from jadekit.build import build_model, load_resolved
from jadekit.engine.models import Batch


def protocol_batch(resolved) -> Batch:
    """A training batch of the recipe's shapes (FLOPs do not depend on the values)."""
    t, n = resolved.recipe.train, len(resolved.primary.info.class_names)
    b_aux = t.auxiliary_batch_size or t.batch_size
    return Batch(x=torch.rand(t.batch_size, *resolved.primary.info.image_shape), y=torch.arange(t.batch_size) % n,
                 x_aux=torch.rand(b_aux, *resolved.auxiliary.info.image_shape), y_aux=torch.arange(b_aux) % n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[6000, 24000], help="step budgets to price")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per label budget")
    parser.add_argument("--budgets", type=int, default=2, help="label budgets (the protocol: 10 and 100 per class)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    resolved = load_resolved(RECIPE, ["primary.download=false", "auxiliary.download=false"])
    batch = protocol_batch(resolved)
    flops = {}
    for method in METHODS:
        flops[method] = step_flops(build_model(method, resolved), batch)  # a fresh model trains: dropout counted
        print(f"{method:6s}: {flops[method] / 1e9:.3f} GFLOP per training step")
    cores = torch.get_num_threads()
    together = conv_peak_gflops(torch.device("cpu"))
    torch.set_num_threads(1)
    one = conv_peak_gflops(torch.device("cpu"))
    peak = max(together, cores * one)
    runs = args.seeds * args.budgets
    print(f"dense conv peak: {one:.1f} GFLOP/s on one thread, {together:.1f} on {cores}; "
          f"the floor uses {peak:.1f}; {runs} runs per method")
    floors = {}
    for steps in args.steps:
        floors[steps] = sum(flops.values()) * steps * runs / (peak * 1e9) / 60
        print(f"{steps:6d} steps: at least {floors[steps]:.1f} min at 100 % of the peak, "
              f"{floors[steps] / 0.5:.1f} min at 50 %")
    if args.json:
        record = {"step_gflop": {m: f / 1e9 for m, f in flops.items()}, "conv_peak_gflops": peak,
                  "conv_peak_one_thread": one, "conv_peak_all_threads": together, "cores": cores,
                  "runs_per_method": runs, "floor_minutes": floors, "torch": torch.__version__}
        args.json.write_text(json.dumps(record, indent=2) + "\n")

if __name__ == "__main__":
    main()
