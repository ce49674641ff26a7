"""Where one training step's time goes: each convolution and max-pool, timed inside jadekit's training loop.

`torch.profiler` misattributes time on these CPUs (it put 11 ms of a 54 ms jade step in a max-pool
backward's zero fill that takes under 1 ms: docs/results.md, Speed), and a layer timed alone in a loop
is slower than inside the step (cold memory, page faults). So this script runs the protocol's recipe
through `make_trainer`, `batch_drawer` and `fit`, with every `Conv2d` and `MaxPool2d` replaced by a
module that runs the same aten ops inside an autograd Function and times them with `perf_counter`.
The step time, and its phases (drawing the batch, the forward pass, the optimizer), are measured first
on the unwrapped model.

    JADEKIT_DATA=../shared/data python benchmarks/step_breakdown.py [--method jade] [--threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from jadekit.build import load_resolved
from jadekit.engine.loop import LoopPlan, fit
from jadekit.runner import DataCache
from jadekit.trainer import batch_drawer, loss_weights, make_trainer

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "usps_mnist.toml"
Timings = dict[str, dict[str, list[float]]]


class _TimedConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, conv: nn.Conv2d, times: dict[str, list[float]]):
        start = time.perf_counter()
        y = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        times["forward"].append(time.perf_counter() - start)
        ctx.save_for_backward(x, weight)
        ctx.conv, ctx.times, ctx.has_bias = conv, times, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        c = ctx.conv
        start = time.perf_counter()
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, list(c.stride), list(c.padding),
            list(c.dilation), False, [0, 0], c.groups, [ctx.needs_input_grad[0], True, ctx.has_bias])
        ctx.times["backward"].append(time.perf_counter() - start)
        return gx, gw, gb, None, None


class _TimedPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, pool: nn.MaxPool2d, times: dict[str, list[float]]):
        start = time.perf_counter()
        y, indices = torch.ops.aten.max_pool2d_with_indices(x, *_pool_args(pool))
        times["forward"].append(time.perf_counter() - start)
        ctx.save_for_backward(x, indices)
        ctx.pool, ctx.times = pool, times
        return y

    @staticmethod
    def backward(ctx, grad):
        x, indices = ctx.saved_tensors
        start = time.perf_counter()
        gx = torch.ops.aten.max_pool2d_with_indices_backward(grad, x, *_pool_args(ctx.pool), indices)
        ctx.times["backward"].append(time.perf_counter() - start)
        return gx, None, None


def _pool_args(p: nn.MaxPool2d) -> list:
    def pair(v: int | tuple[int, ...]) -> list[int]:
        return [v, v] if isinstance(v, int) else list(v)

    return [pair(p.kernel_size), pair(p.stride or p.kernel_size), pair(p.padding), pair(p.dilation), p.ceil_mode]


class _Timed(nn.Module):
    """A `Conv2d` or `MaxPool2d` that records its forward and backward times (and, for a conv, its FLOPs)."""

    def __init__(self, layer: nn.Module, name: str, timings: Timings) -> None:
        super().__init__()
        self.layer, self.times = layer, timings.setdefault(name, {"forward": [], "backward": [], "flops": []})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.layer, nn.MaxPool2d):
            return _TimedPool.apply(x, self.layer, self.times)
        c = self.layer
        y = _TimedConv.apply(x, c.weight, c.bias, c, self.times)
        forward = 2 * y.numel() * (c.in_channels // c.groups) * c.kernel_size[0] * c.kernel_size[1]
        self.times["flops"].append(forward * (3 if x.requires_grad else 2))  # + weight grad (+ input grad)
        return y


def _timed_call(f: Callable, times: list[float]) -> Callable:
    """`f`, appending each call's seconds to `times` (its attributes copied: the LR scheduler looks for its own mark on
    `optimizer.step`, and warns when it is gone)."""
    @functools.wraps(f)
    def call(*args, **kwargs):
        start = time.perf_counter()
        out = f(*args, **kwargs)
        times.append(time.perf_counter() - start)
        return out

    return call


def instrument(model: nn.Module) -> Timings:
    """Replace every plain `Conv2d` and `MaxPool2d` of `model` by a timed one (same ops, same parameters)."""
    timings: Timings = {}
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if type(child) in (nn.Conv2d, nn.MaxPool2d):
                what = f"{parent_name}.{name}" if parent_name else name
                if isinstance(child, nn.Conv2d):
                    what += f" conv {child.in_channels}->{child.out_channels}"
                else:
                    what += " max-pool"
                setattr(parent, name, _Timed(child, what, timings))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("single", "paired", "jade"), default="jade")
    parser.add_argument("--steps", type=int, default=60, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the protocol runs one per process)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    resolved = load_resolved(RECIPE, ["primary.download=false", "auxiliary.download=false"])
    cache = DataCache(resolved)
    data = {d: cache.domain(d, 0) for d in ("primary", "auxiliary")}
    plan = LoopPlan(10**9, 10**9, 10**9)

    def train(timed: bool) -> tuple[float, Timings]:
        """ms per step, and the layers' timings (timed=True) or the step's phases' (timed=False)."""
        trainer = make_trainer(args.method, resolved, data, 0, torch.device("cpu"))
        draw = batch_drawer(trainer, data["primary"], data["auxiliary"], resolved.recipe.train)
        if timed:
            timings = instrument(trainer.model)
        else:  # the phases `fit` calls, each wrapped in place (the optimizer's own step wrapper still runs)
            timings = {"phases": {"draw": [], "forward": [], "optimizer": []}}
            draw = _timed_call(draw, timings["phases"]["draw"])
            trainer.model.loss_terms = _timed_call(trainer.model.loss_terms, timings["phases"]["forward"])
            trainer.optimizer.step = _timed_call(trainer.optimizer.step, timings["phases"]["optimizer"])

        def run(steps: int) -> None:
            fit(trainer.model, trainer.optimizer, trainer.scheduler, draw, loss_weights(resolved.recipe),
                lambda: {"accuracy": 0.0, "nll": 0.0}, dataclasses.replace(plan, steps=trainer.state.step + steps),
                trainer.state)

        run(args.warmup)
        for t in timings.values():
            for v in t.values():
                v.clear()
        start = time.perf_counter()
        run(args.steps)
        return (time.perf_counter() - start) / args.steps * 1000, timings

    step_ms, phase_times = train(timed=False)
    phases = {k: statistics.fmean(v) * 1000 for k, v in phase_times["phases"].items()}
    phases["backward and the rest"] = step_ms - sum(phases.values())
    timed_step_ms, timings = train(timed=True)
    layers = {}
    for name, t in timings.items():
        fwd, bwd = (statistics.median(t[k]) * 1000 for k in ("forward", "backward"))
        layers[name] = {"forward_ms": fwd, "backward_ms": bwd}
        if t["flops"]:
            layers[name]["gflops"] = t["flops"][-1] / (fwd + bwd) / 1e6
    print(f"{args.method} step: {step_ms:.1f} ms ({timed_step_ms:.1f} ms with the timing wrappers), "
          f"{args.threads} thread(s), over {args.steps} steps")
    print("  phases (means): " + ", ".join(f"{k} {v:.1f}" for k, v in phases.items()) + " ms")
    print("  each layer (medians):")
    for name, r in layers.items():
        rate = f"{r['gflops']:6.1f} GFLOP/s" if "gflops" in r else ""
        print(f"  {name:50s} fwd {r['forward_ms']:6.2f}  bwd {r['backward_ms']:6.2f} ms  {rate}")
    total = sum(r["forward_ms"] + r["backward_ms"] for r in layers.values())
    print(f"  all of these: {total:.1f} ms a step")
    if args.json:
        args.json.write_text(json.dumps({"method": args.method, "threads": args.threads, "step_ms": step_ms,
                                         "phases_ms": phases, "timed_step_ms": timed_step_ms, "layers": layers},
                                        indent=2))


if __name__ == "__main__":
    main()
