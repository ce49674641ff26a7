"""`benchmarks/throughput.py` still runs against the engine it times (on the real data; skipped without it)."""

from __future__ import annotations

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
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--steps", "2", "--json", str(out)],
                            capture_output=True, text=True, env={**os.environ, "JADEKIT_DATA": str(SHARED_DATA)},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["train"]) == {"single", "paired", "jade"}
    for timing in report["train"].values():
        assert timing["jadekit"] > 0 and timing["reference"] > 0 and timing["ratio"] > 0
        assert 0 < timing["share_of_conv_peak"] < 1  # of the best window: never above the peak
    assert report["eval"]["ratio"] > 0 and report["conv_peak_gflops"] > 0
