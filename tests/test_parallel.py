"""`jadekit run --jobs N`: runs in worker processes train exactly as alone; stop, failure and resume stay clean."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import get_args

import pytest
import torch
from typer.testing import CliRunner

from jadekit import io
from jadekit.cli import app
from jadekit.config import Method
from jadekit.parallel import LONGEST_FIRST, worker_devices

JADEKIT = str(Path(sys.executable).parent / "jadekit")
METHODS = ("single", "paired", "jade")


def run_cli(*args: str):
    result = CliRunner().invoke(app, ["run", *map(str, args)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


@pytest.fixture(scope="module")
def two_seeds(write_tiny_recipe, tmp_path_factory):
    """Factory: the tiny recipe (every method, one seed, one thread per run) writing to `tmp / name`."""
    tmp = tmp_path_factory.mktemp("parallel")

    def write(name: str, **train) -> Path:
        return write_tiny_recipe(tmp / f"{name}.toml", tmp / name, train={"threads": 1, **train})

    return write


def test_runs_in_workers_equal_runs_in_turn(two_seeds):
    in_turn, in_workers = two_seeds("in-turn"), two_seeds("in-workers")
    assert run_cli(in_turn).exit_code == 0
    result = run_cli(in_workers, "--jobs", "2")  # three runs, two at a time
    assert result.exit_code == 0, result.output
    for method in METHODS:
        assert f"{method} seed 0: primary test error" in result.output
        a, b = (recipe.with_suffix("") / method / "seed-0" for recipe in (in_turn, in_workers))
        fa, fb = (json.loads((d / "final.json").read_text()) for d in (a, b))
        assert (fa["primary_test_error"], fa["auxiliary_test_error"]) == (fb["primary_test_error"], fb["auxiliary_test_error"])
        wa, wb = (io.load_checkpoint(d / "checkpoint.pt")[0]["model"] for d in (a, b))
        assert all(torch.equal(wa[k], wb[k]) for k in wa), method
    summary = json.loads((in_workers.with_suffix("") / "summary.json").read_text())
    assert summary == json.loads((in_turn.with_suffix("") / "summary.json").read_text())


def test_a_failed_run_is_one_clear_message_and_keeps_its_checkpoint(two_seeds):
    recipe = two_seeds("diverged", lr=1e30, checkpoint_every=1)
    result = run_cli(recipe, "--jobs", "2")
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    assert "became nan" in result.output or "became inf" in result.output, result.output
    assert "last good checkpoint" in result.output and "lower train.lr" in result.output
    assert "the other runs:" in result.output and "1 run(s) not started" in result.output  # single: longest first
    assert not list(recipe.with_suffix("").glob("*/seed-*/final.json"))
    said = " ".join(result.output.split())
    kept = re.findall(r"last good checkpoint \((\S+), step (\d+)\) is kept", said)
    stopped = re.findall(r"stopped at step (\d+); checkpoint written to (\S+?checkpoint\.pt)", said)
    assert kept and len(kept + stopped) == 2, said  # the failed run, and the one beside it: stopped, or failed too
    for path, step in [*kept, *((p, s) for s, p in stopped)]:
        state, notes = io.load_checkpoint(Path(path))
        assert notes == [] and state["loop"]["step"] == int(step), path
        assert all(torch.isfinite(w).all() for w in state["model"].values()), path


# Runs that cannot finish while a test waits for the second worker (which may start seconds after the first): the
# tests stop them, then a rerun with `--resume --set train.steps=...` finishes them a few steps later.
ENDLESS = 10**7


def steps_to_finish(out: Path) -> int:
    """A step budget just past the furthest checkpoint of the jade runs under `out`."""
    return 5 + max(io.load_checkpoint(c)[0]["loop"]["step"] for c in out.glob("jade/seed-*/checkpoint.pt"))


def start_two_jobs_until_both_checkpoint(recipe: Path, out: Path, start_new_session: bool = False) -> subprocess.Popen:
    """Start `jadekit run RECIPE --jobs 2` (a jade-only recipe of ENDLESS steps); return once two runs checkpointed."""
    proc = subprocess.Popen([JADEKIT, "run", str(recipe), "--jobs", "2"], start_new_session=start_new_session,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while len(list(out.glob("jade/seed-*/checkpoint.pt"))) < 2:
        assert proc.poll() is None, proc.communicate()[0].decode()
        assert time.monotonic() < deadline, "the two runs never checkpointed"
        time.sleep(0.02)
    return proc


def test_ctrl_c_stops_every_worker_with_a_checkpoint_and_a_rerun_resumes_them(write_tiny_recipe, tmp_path):
    recipe = write_tiny_recipe(tmp_path / "stopped.toml", tmp_path / "out", experiment={"methods": ["jade"], "seeds": [0, 1]},
                               train={"steps": ENDLESS, "checkpoint_every": 5})
    out = tmp_path / "out"
    # A terminal's Ctrl-C reaches the whole process group: the parent and its workers.
    proc = start_two_jobs_until_both_checkpoint(recipe, out, start_new_session=True)
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "--resume" in output
    assert output.count("checkpoint written to") == 2, output
    for seed in (0, 1):
        state, notes = io.load_checkpoint(out / "jade" / f"seed-{seed}" / "checkpoint.pt")
        assert notes == [] and state["loop"]["step"] >= 5
    assert not list(out.glob("jade/seed-*/final.json"))

    result = run_cli(recipe, "--jobs", "2", "--resume", "--set", f"train.steps={steps_to_finish(out)}")
    assert result.exit_code == 0, result.output
    assert result.output.count("resuming at step") == 2, result.output
    assert len(list(out.glob("jade/seed-*/final.json"))) == 2


def running(pid: str) -> bool:
    """Whether process `pid` exists and is not a zombie (its /proc/<id>/stat: "id (name) state ...")."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def children(pid: int) -> list[str]:
    """The process ids whose parent is `pid` (from /proc/<id>/stat: "id (name) state parent-id ...")."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if stat.read_text().rsplit(")", 1)[1].split()[1] == str(pid):
                found.append(stat.parent.name)
    return found


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the worker processes through /proc")
def test_a_signal_to_one_worker_stops_the_study_and_starts_no_more_runs(write_tiny_recipe, tmp_path):
    recipe = write_tiny_recipe(tmp_path / "one.toml", tmp_path / "out", experiment={"methods": ["jade"], "seeds": [0, 1, 2]},
                               train={"steps": ENDLESS, "checkpoint_every": 5})
    out = tmp_path / "out"
    proc = start_two_jobs_until_both_checkpoint(recipe, out)
    workers = [pid for pid in children(proc.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2, children(proc.pid)
    os.kill(int(workers[0]), signal.SIGTERM)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "1 run(s) not started" in output, output
    assert not (out / "jade" / "seed-2").exists()


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the worker processes through /proc")
def test_a_worker_killed_by_the_system_is_one_message_and_checkpoints_stay(write_tiny_recipe, tmp_path):
    recipe = write_tiny_recipe(tmp_path / "killed.toml", tmp_path / "out", experiment={"methods": ["jade"], "seeds": [0, 1]},
                               train={"steps": ENDLESS, "checkpoint_every": 5})
    out = tmp_path / "out"
    proc = start_two_jobs_until_both_checkpoint(recipe, out)
    workers = [pid for pid in children(proc.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    os.kill(int(workers[0]), signal.SIGKILL)  # as the out-of-memory killer would
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 2, output
    assert "Traceback" not in output and "a worker process died" in output and "fewer --jobs" in output, output
    assert re.search(r"while training jade seed [01]", " ".join(output.split())), output  # the run it took along
    for seed in (0, 1):
        assert io.load_checkpoint(out / "jade" / f"seed-{seed}" / "checkpoint.pt")[0]["loop"]["step"] >= 5


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the worker processes through /proc")
def test_workers_of_a_killed_parent_checkpoint_and_exit_and_a_rerun_trains_each_step_once(write_tiny_recipe, tmp_path):
    """SIGKILL to `jadekit run --jobs 2` itself: its workers stop at their next step with a checkpoint and exit (they
    trained on beside the rerun, writing every step twice); the rerun resumes both runs."""
    recipe = write_tiny_recipe(tmp_path / "orphans.toml", tmp_path / "out", experiment={"methods": ["jade"], "seeds": [0, 1]},
                               train={"steps": ENDLESS, "checkpoint_every": 5})
    out = tmp_path / "out"
    proc = start_two_jobs_until_both_checkpoint(recipe, out)
    workers = [pid for pid in children(proc.pid) if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(workers) == 2
    proc.kill()
    try:
        proc.communicate(timeout=60)  # returns once the workers, which share its output pipe, have exited too
        deadline = time.monotonic() + 30
        while any(running(pid) for pid in workers):
            assert time.monotonic() < deadline, "the workers of the killed parent kept running"
            time.sleep(0.1)
    finally:
        for pid in workers:  # never leave them behind, whatever failed above
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
    steps = steps_to_finish(out)
    result = run_cli(recipe, "--jobs", "2", "--resume", "--set", f"train.steps={steps}")
    assert result.exit_code == 0 and result.output.count("resuming at step") == 2, result.output
    for seed in (0, 1):
        trained = [r["step"] for r in io.read_jsonl(out / "jade" / f"seed-{seed}" / "metrics.jsonl") if r["kind"] == "train"]
        assert trained == list(range(1, steps + 1))


def test_worker_devices_spread_a_plain_cuda_over_every_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert worker_devices(torch.device("cuda"), 3) == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices(torch.device("cuda:1"), 2) == ["cuda:1", "cuda:1"]
    assert worker_devices(torch.device("cpu"), 2) == ["cpu", "cpu"]


def test_every_method_has_a_place_in_the_longest_first_order():
    assert sorted(LONGEST_FIRST) == sorted(get_args(Method))
