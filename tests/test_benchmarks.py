"""The benchmarks behind docs/results.md still run against the engine (on the real data; skipped without it):
`throughput.py`, `protocol_floor.py` and the protocol script whose commands the results record."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def test_throughput_benchmark_runs_and_reports_every_ratio(tmp_path):
    if not (SHARED_DATA / "MNIST").is_dir() or not (SHARED_DATA / "USPS").is_dir():
        pytest.skip(f"real data not found under {SHARED_DATA}")
    out = tmp_path / "throughput.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--steps", "2", "--threads", "1",
                             "--json", str(out)],
                            capture_output=True, text=True, env={**os.environ, "JADEKIT_DATA": str(SHARED_DATA)},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["train"]) == {"single", "paired", "jade"}
    for timing in report["train"].values():
        assert timing["jadekit"] > 0 and timing["reference"] > 0 and timing["ratio"] > 0
        # two timings on a shared machine: their ratio is the benchmark's to report, not a test's to bound
        assert 0 < timing["share_of_conv_peak"] < float("inf")
    assert report["eval"]["ratio"] > 0 and report["conv_peak_gflops"] > 0
    assert report["threads"] == 1  # --threads: both paths and the peak on one core, the protocol's setting


def test_protocol_floor_prices_each_step_budget_from_the_models_flops(tmp_path):
    """`benchmarks/protocol_floor.py` reads no data: FLOPs per step from the recipe's models, times steps and runs."""
    out = tmp_path / "floor.json"
    env = {k: v for k, v in os.environ.items() if k != "JADEKIT_DATA"}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "protocol_floor.py"), "--steps", "1000", "3000",
                             "--seeds", "2", "--budgets", "1", "--json", str(out)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    gflop = report["step_gflop"]
    assert 0 < gflop["single"] < gflop["paired"] < gflop["jade"]  # jade adds two decoders to paired's two encoders
    assert report["runs_per_method"] == 2
    assert report["conv_peak_gflops"] >= report["conv_peak_all_threads"] > 0
    floor = report["floor_minutes"]
    assert floor["3000"] == pytest.approx(3 * floor["1000"])
    assert floor["1000"] == pytest.approx(sum(gflop.values()) * 1000 * 2 / report["conv_peak_gflops"] / 60)


@pytest.mark.parametrize("split_methods", ["0", "1"])
def test_protocol_script_trains_every_seed_and_method_and_writes_each_budget_summary(tmp_path, split_methods):
    """`benchmarks/usps_mnist_protocol.sh`, shortened through its `--` arguments: one process per (budget, seed),
    or per (budget, seed, method) with SPLIT_METHODS=1 (the GPU command), then one summary per budget."""
    if not (SHARED_DATA / "MNIST").is_dir() or not (SHARED_DATA / "USPS").is_dir():
        pytest.skip(f"real data not found under {SHARED_DATA}")
    env = {**os.environ, "JADEKIT_DATA": str(SHARED_DATA), "SEEDS": "0 1", "SPLIT_METHODS": split_methods,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # its `jadekit`
    short = ["--set", "train.steps=4", "--set", "train.eval_every=2", "--set", "train.batch_size=8",
             "--set", "auxiliary.limit=300"]
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "usps_mnist_protocol.sh"), str(tmp_path), "10", "--", *short],
                            cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    jobs = [f"seed={s}{f' {m}' if split_methods == '1' else ''} exit 0"
            for s in (0, 1) for m in (("jade", "paired", "single") if split_methods == "1" else ("",))]
    assert all(f"labels_per_class=10 {job}" in result.stdout for job in jobs), result.stdout
    assert "wall time: " in result.stdout
    summary = json.loads((tmp_path / "usps_mnist_10" / "summary.json").read_text())
    assert [(r["method"], r["seeds"]) for r in summary["rows"]] == [(m, [0, 1]) for m in ("single", "paired", "jade")]
    final = json.loads((tmp_path / "usps_mnist_10" / "jade" / "seed-1" / "final.json").read_text())
    assert final["steps"] == 4
    if split_methods == "1":
        return
    # the other two recorded commands, on these runs: the label-budget figure and the tuning view
    figure = tmp_path / "curve.png"
    curve = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "label_curve.py"), str(tmp_path / "usps_mnist_10"),
                            "--out", str(figure)], capture_output=True, text=True, timeout=300)
    assert curve.returncode == 0, curve.stderr[-2000:]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = tmp_path / "heldout.json"
    heldout = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "heldout_train_error.py"),
                              str(tmp_path / "usps_mnist_10"), "--json", str(scores), "--limit", "2000"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert heldout.returncode == 0, heldout.stderr[-2000:]
    rows = json.loads(scores.read_text())
    assert sorted((r["method"], r["seed"]) for r in rows) == sorted((m, s) for m in ("single", "paired", "jade") for s in (0, 1))
    assert all(0 <= r["primary_last"] <= 100 and r["limit"] == 2000 for r in rows)
    assert all("auxiliary_kept" in r for r in rows if r["method"] != "single")


def test_step_breakdown_wrappers_compute_the_same_function_and_gradients():
    """`benchmarks/step_breakdown.py` times layers by replacing them: the replaced model must train identically."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from step_breakdown import instrument
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.MaxPool2d(2), nn.ReLU(),
                          nn.Conv2d(4, 3, 3, stride=2, padding=1, bias=False), nn.MaxPool2d(2, ceil_mode=True))
    timed = copy.deepcopy(model)
    timings = instrument(timed)
    assert sorted(timings) == ["0 conv 1->4", "1 max-pool", "3 conv 4->3", "4 max-pool"]
    x = torch.rand(2, 1, 13, 13, requires_grad=True)
    grads = []
    for m in (model, timed):
        x.grad = None
        m(x).square().sum().backward()
        grads.append([x.grad.clone(), *(p.grad.clone() for p in m.parameters())])
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True)) and len(grads[0]) == 4
    assert all(len(t["forward"]) == len(t["backward"]) == 1 for t in timings.values())


def test_step_breakdown_times_every_conv_and_pool_of_a_jade_step(tmp_path):
    if not (SHARED_DATA / "MNIST").is_dir() or not (SHARED_DATA / "USPS").is_dir():
        pytest.skip(f"real data not found under {SHARED_DATA}")
    out = tmp_path / "breakdown.json"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_breakdown.py"), "--steps", "2", "--warmup",
                             "1", "--json", str(out)], capture_output=True, text=True,
                            env={**os.environ, "JADEKIT_DATA": str(SHARED_DATA)}, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    phases = report["phases_ms"]
    assert list(phases) == ["draw", "forward", "optimizer", "backward and the rest"]
    assert all(v > 0 for v in phases.values()) and sum(phases.values()) == pytest.approx(report["step_ms"])
    assert report["step_ms"] > 0 and len(report["layers"]) == 16  # 2 encoders x (3 convs + 3 pools) + 2 decoders x 2 convs
    assert all(r["forward_ms"] > 0 and r["backward_ms"] > 0 for r in report["layers"].values())
    assert sum("gflops" in r for r in report["layers"].values()) == 10
