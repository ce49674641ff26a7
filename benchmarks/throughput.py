"""Training and evaluation throughput: jadekit vs a plain PyTorch reference, side by side.

The reference is what one writes first: torchvision datasets, a DataLoader with a per-sample
ToTensor, default (NCHW-contiguous) memory format, the same model and loss in the paper's
literal layer order (conv, ReLU, pool; upsample, conv), and the default AdamW. jadekit keeps
the data resident as uint8 tensors, draws batches by index, normalises per batch and runs
channels-last. Also reports jadekit's achieved GFLOP/s against this machine's measured
dense-convolution peak.

    JADEKIT_DATA=../shared/data python benchmarks/throughput.py [--steps 40] [--device cpu|cuda] [--threads 1] [--json out.json]

On CUDA both paths run on the GPU: jadekit's data is resident in GPU memory, the reference
copies each DataLoader batch to it (the usual loop).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import datasets, transforms

from jadekit.build import build_model, load_resolved
from jadekit.data.prepare import DomainData
from jadekit.engine.evaluate import predict_logits
from jadekit.engine.layers import literal_form
from jadekit.engine.loop import LoopPlan, LoopState, fit
from jadekit.engine.models import Batch, LossWeights
from jadekit.runner import DataCache
from jadekit.trainer import batch_drawer, loss_weights, make_trainer

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "usps_mnist.toml"
METHODS = ("single", "paired", "jade")


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def conv_peak_gflops(device: torch.device, seconds: float = 3.0, window: float = 0.5) -> float:
    """GFLOP/s of a large dense 3x3 convolution (forward, fp32), channels-last: this machine's conv peak.

    The best of `seconds / window` timed windows, like `timeit`'s minimum: on a shared machine a neighbour's load
    only lowers a window, and an averaged peak would make every share of it look better than it is.
    """
    n_batch = 32 if device.type == "cpu" else 256
    conv = torch.nn.Conv2d(128, 128, 3, padding=1).to(device, memory_format=torch.channels_last)
    x = torch.randn(n_batch, 128, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    flops = 2 * n_batch * 128 * 128 * 9 * 32 * 32
    best = 0.0
    with torch.inference_mode():
        for _ in range(3):
            conv(x)
        sync(device)
        for _ in range(max(1, round(seconds / window))):
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < window:
                conv(x)
                n += 1
                if n % 10 == 0:
                    sync(device)
            sync(device)
            best = max(best, flops * n / (time.perf_counter() - start) / 1e9)
    return best


def step_flops(model: torch.nn.Module, batch: Batch) -> int:
    """FLOPs of one training step (forward + backward), counted by torch's FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        model.loss_terms(batch, LossWeights())["total"].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def jadekit_train(method: str, resolved, data: dict[str, DomainData], steps: int, device: torch.device,
                  autocast: torch.dtype | None = None) -> tuple[float, float]:
    """(samples/s, GFLOP/s) of jadekit's own training path: `make_trainer`, `batch_drawer`, `fit`."""
    t = resolved.recipe.train
    trainer = make_trainer(method, resolved, data, 0, device)
    model = trainer.model
    draw = batch_drawer(trainer, data["primary"], data["auxiliary"], t)
    flops = step_flops(model, draw())
    val = lambda: {"accuracy": 0.0, "nll": 0.0}  # noqa: E731  (no validation inside the timing)
    weights = loss_weights(resolved.recipe)
    log_every = 1 if device.type == "cpu" else 25  # as the runner: on a GPU, one host sync per 25 steps
    plan = LoopPlan(5 + steps, 10**9, 10**9, log_every=log_every, autocast_dtype=autocast, device_type=device.type)
    fit(model, trainer.optimizer, trainer.scheduler, draw, weights, val, dataclasses.replace(plan, steps=5))  # warm-up
    sync(device)
    start = time.perf_counter()
    fit(model, trainer.optimizer, trainer.scheduler, draw, weights, val, plan, LoopState(step=5))
    sync(device)
    elapsed = time.perf_counter() - start
    samples = steps * t.batch_size * (2 if model.uses_auxiliary else 1)
    return samples / elapsed, flops * steps / elapsed / 1e9


def reference_sets(root: Path, tmp: Path):
    """torchvision's own datasets (MNIST needs its IDX files decompressed: do that in a temp dir)."""
    raw = tmp / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (root / "MNIST" / "raw").iterdir():
        if f.suffix == ".gz":
            with gzip.open(f) as src, open(raw / f.stem, "wb") as dst:
                shutil.copyfileobj(src, dst)
        else:
            shutil.copy(f, raw / f.name)
    tt = transforms.ToTensor()
    return {
        "usps_train": datasets.USPS(str(root / "USPS"), train=True, transform=tt),
        "usps_test": datasets.USPS(str(root / "USPS"), train=False, transform=tt),
        "mnist_train": datasets.MNIST(str(tmp), train=True, transform=tt),
        "mnist_test": datasets.MNIST(str(tmp), train=False, transform=tt),
    }


def reference_train(method: str, resolved, sets, indices: dict, steps: int, device: torch.device) -> float:
    """Samples/s of the plain loop: two DataLoaders, per-sample ToTensor, NCHW-contiguous."""
    t = resolved.recipe.train
    torch.manual_seed(0)
    model = literal_form(build_model(method, resolved)).to(device, memory_format=torch.contiguous_format)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr)
    prim = DataLoader(Subset(sets["usps_train"], indices["primary"]), batch_size=t.batch_size, shuffle=True, drop_last=True)
    aux = DataLoader(Subset(sets["mnist_train"], indices["auxiliary"]), batch_size=t.batch_size, shuffle=True, drop_last=True)

    def batches():
        while True:
            yield from zip(prim, aux, strict=False)

    it = batches()
    done, start = -5, 0.0
    for (x, y), (xa, ya) in it:
        if done == 0:
            sync(device)
            start = time.perf_counter()
        if done == steps:
            break
        x, y, xa, ya = (v.to(device) for v in (x, y, xa, ya))
        opt.zero_grad()
        model.loss_terms(Batch(x, y, xa, ya), LossWeights())["total"].backward()
        opt.step()
        done += 1
    sync(device)
    elapsed = time.perf_counter() - start
    return steps * t.batch_size * (2 if model.uses_auxiliary else 1) / elapsed


def eval_throughputs(resolved, cache: DataCache, sets, device: torch.device, repeats: int = 3) -> dict[str, float]:
    """Samples/s predicting the USPS + MNIST test sets: jadekit (resident uint8) vs DataLoader.

    Each path is warmed up on both domains, then timed `repeats` times; the median pass counts.
    """
    model = build_model("jade", resolved).to(device)
    p, a = cache.split("primary", "test").images.to(device), cache.split("auxiliary", "test").images.to(device)
    n = len(p) + len(a)
    ref_model = literal_form(build_model("jade", resolved)).to(device, memory_format=torch.contiguous_format).eval()

    def ours() -> None:
        predict_logits(model, p, "primary")
        predict_logits(model, a, "auxiliary")

    @torch.no_grad()
    def reference() -> None:
        for name, domain in (("usps_test", "primary"), ("mnist_test", "auxiliary")):
            for x, _ in DataLoader(sets[name], batch_size=1024):
                ref_model.logits(x.to(device), domain)

    def samples_per_second(predict) -> float:
        times = []
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            predict()
            sync(device)
            times.append(time.perf_counter() - start)
        return n / statistics.median(times)

    with torch.no_grad():  # warm-up of both paths on both domains: kernels, caches
        for images, domain in ((p[:256], "primary"), (a[:256], "auxiliary")):
            predict_logits(model, images, domain)
            ref_model.logits(images.float().div(255), domain)
    mine, ref = samples_per_second(ours), samples_per_second(reference)
    return {"jadekit": mine, "reference": ref, "ratio": mine / ref}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per method and path")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]: where both paths run")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="jadekit's training precision (train.precision)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--threads", type=int, help="CPU threads for both paths and the peak (default: torch's, one per "
                                                      "core); 1 is the protocol's setting, one process per core")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    root = Path(os.environ.get("JADEKIT_DATA", "~/.cache/jadekit")).expanduser()
    # No augmentation: the reference has none either, so both paths do the same work per step.
    resolved = load_resolved(RECIPE, ["primary.download=false", "auxiliary.download=false", "train.augment_shift=0",
                                      "train.augment_rotate=0", "train.augment_scale=0"])
    cache = DataCache(resolved)
    autocast = torch.bfloat16 if args.precision == "bf16" else None
    results: dict[str, object] = {"device": str(device), "precision": args.precision,
                                  "threads": torch.get_num_threads(), "torch": torch.__version__}
    if device.type == "cuda":
        results["gpu"] = torch.cuda.get_device_name(device)
    results["conv_peak_gflops"] = peak = conv_peak_gflops(device)
    with tempfile.TemporaryDirectory() as tmp:
        sets = reference_sets(root, Path(tmp))
        data = {d: cache.domain(d, 0) for d in ("primary", "auxiliary")}  # seed 0's subsets, for both paths
        indices = {d: data[d].indices["train"] for d in data}
        on_device = {d: v.to(device) for d, v in data.items()}
        train = {}
        for method in METHODS:
            ours, gflops = jadekit_train(method, resolved, on_device, args.steps, device, autocast)
            ref = reference_train(method, resolved, sets, indices, args.steps, device)
            train[method] = {"jadekit": ours, "reference": ref, "ratio": ours / ref, "gflops": gflops,
                             "share_of_conv_peak": gflops / peak}
            print(f"train {method:6s}: jadekit {ours:8.0f} samples/s  reference {ref:8.0f}  x{ours / ref:.2f}  "
                  f"{gflops:6.1f} GFLOP/s", flush=True)
        results["train"] = train
        results["eval"] = ev = eval_throughputs(resolved, cache, sets, device)
    # Measured again at the end, and the higher kept, so a busy moment at the start does not lower the peak.
    results["conv_peak_gflops"] = peak = max(peak, conv_peak_gflops(device))
    for t in train.values():
        t["share_of_conv_peak"] = t["gflops"] / peak
    print(f"eval  (jade):  jadekit {ev['jadekit']:8.0f} samples/s  reference {ev['reference']:8.0f}  x{ev['ratio']:.2f}")
    print(f"dense conv peak: {peak:.1f} GFLOP/s on {results.get('gpu', str(results['threads']) + ' threads')} "
          "(best window, before and after the runs)")
    for method, t in train.items():
        print(f"train {method:6s}: {100 * t['share_of_conv_peak']:.0f}% of conv peak")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
