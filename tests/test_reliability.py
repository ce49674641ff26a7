"""Reliability: exact resume after SIGKILL, Ctrl-C, atomic writes, checkpoint fallback, NaN guard."""

from __future__ import annotations

import contextlib
import gzip
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from jadekit import io
from jadekit.cli import app
from jadekit.config import load_recipe
from jadekit.errors import RunDirError
from jadekit.runner import check_output_dir, recipe_fingerprint

JADEKIT = [str(Path(sys.executable).parent / "jadekit")]
RUN_DIR = Path("out") / "jade" / "seed-0"


# --- tiny data in the real formats (MNIST IDX .gz, USPS libsvm .bz2) and a tiny recipe ---------------


def write_data(root: Path, writers) -> Path:
    """300 MNIST + 60 test digits and 120 USPS + 40 test digits, faintly class-dependent noise."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 300), ("test", 60)):
        labels = np.arange(n) % 10
        writers.mnist(root, split, (rng.random((n, 28, 28)) * 60 + labels[:, None, None] * 19).astype(np.uint8), labels)
    for split, n in (("train", 120), ("test", 40)):
        labels = np.arange(n) % 10
        writers.usps(root, split, labels, writers.grey_to_usps(rng.random((n, 256)) * 60 + labels[:, None] * 19))
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, digit_writers) -> Path:
    return write_data(tmp_path_factory.mktemp("data"), digit_writers)


@pytest.fixture(scope="module")
def write_recipe(write_tiny_recipe, data_root):
    """Factory: `where / "recipe.toml"`, a jade-only tiny recipe over `data_root` writing to `out`, checkpointing every 5
    steps, with every augmentation on (their random draws must resume exactly too)."""

    def write(where: Path, steps: int = 40) -> Path:
        return write_tiny_recipe(where / "recipe.toml", "out", data_root, experiment={"methods": ["jade"]},
                                 model={"classifier_hidden": [32], "dropout": None},
                                 train={"steps": steps, "batch_size": 16, "eval_every": 10, "checkpoint_every": 5,
                                        "augment_shift": 1, "augment_rotate": 10.0, "augment_scale": 0.1})

    return write


def run_cli(args: list[str]):
    result = CliRunner().invoke(app, args)
    # CliRunner catches exceptions: anything but SystemExit would be a traceback for a real user.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state, notes = io.load_checkpoint(run_dir / "checkpoint.pt")
    assert notes == []
    return {**state["model"], **{f"best.{k}": v for k, v in state["loop"]["best_model"].items()}}


def assert_same_run(a: Path, b: Path) -> None:
    fa, fb = json.loads((a / "final.json").read_text()), json.loads((b / "final.json").read_text())
    for key in ("primary_test_error", "auxiliary_test_error", "primary_val_accuracy", "primary_val_balanced_accuracy",
                "best_step", "steps"):
        assert fa[key] == fb[key], key
    assert 0 <= fa["primary_val_balanced_accuracy"] <= 1 and 0 <= fa["primary_test_balanced_accuracy"] <= 1
    assert fa["primary_test_balanced_accuracy"] == fb["primary_test_balanced_accuracy"]
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def train_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in io.read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, write_recipe) -> Path:
    """An uninterrupted 40-step run."""
    where = tmp_path_factory.mktemp("reference")
    recipe = write_recipe(where)
    with contextlib.chdir(where):
        result = run_cli(["run", str(recipe)])
    assert result.exit_code == 0, result.output
    return where / RUN_DIR


def start_run(where: Path, recipe: Path) -> subprocess.Popen:
    return subprocess.Popen([*JADEKIT, "run", str(recipe)], cwd=where, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path.name} appeared: {proc.communicate()[0].decode()}"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.005)


# --- resume ------------------------------------------------------------------------------------------


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, write_recipe, reference):
    recipe = write_recipe(tmp_path)
    run_dir = tmp_path / RUN_DIR
    proc = start_run(tmp_path, recipe)
    wait_for(run_dir / "checkpoint.pt.prev", proc)  # two checkpoints written: step >= 10 of 40
    time.sleep(0.07)  # land somewhere between checkpoints, maybe mid-write
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "final.json").exists()
    with open(run_dir / "metrics.jsonl", "a") as f:  # as if the kill had torn a line in half
        f.write('{"step": 99, "kind": "tr')

    with contextlib.chdir(tmp_path):
        result = run_cli(["run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "resuming at step" in result.output
    assert_same_run(reference, run_dir)
    assert train_steps(run_dir) == list(range(1, 41))  # no step lost, none twice
    assert train_steps(run_dir) == train_steps(reference)
    val = [r["step"] for r in io.read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "val"]
    assert val == [10, 20, 30, 40]


def test_finished_runs_are_skipped(reference):
    with contextlib.chdir(reference.parents[2]):
        before = (reference / "final.json").read_bytes()
        result = run_cli(["run", "recipe.toml"])
    assert result.exit_code == 0, result.output
    assert "finished earlier, skipped" in result.output
    assert (reference / "final.json").read_bytes() == before


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_writes_checkpoint_and_exits_130(tmp_path, write_recipe, stop):
    recipe = write_recipe(tmp_path)
    run_dir = tmp_path / RUN_DIR
    proc = start_run(tmp_path, recipe)
    wait_for(run_dir / "checkpoint.pt", proc)
    proc.send_signal(stop)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, output
    assert "Traceback" not in output
    said = " ".join(output.split())
    assert "checkpoint written to" in said and "fix: run the same command again to continue from the checkpoints" in said
    assert "(add --resume if you change the recipe)" in said
    state, notes = io.load_checkpoint(run_dir / "checkpoint.pt")
    assert notes == [] and 5 <= state["loop"]["step"] < 40
    assert train_steps(run_dir)[-1] == state["loop"]["step"]
    assert not (run_dir / "final.json").exists()


def test_a_second_ctrl_c_aborts_at_once_and_a_second_sigterm_does_not():
    """The first stop signal asks for a checkpoint after the current step; only a second Ctrl-C (a person who will not
    wait) aborts at once, while a repeated SIGTERM (a scheduler's retries) keeps waiting for the checkpoint."""
    from jadekit.parallel import StopOnSignal

    said = []
    ctrl_c = StopOnSignal(lambda: said.append("stopping"))
    ctrl_c(signal.SIGINT, None)
    assert ctrl_c.requested and said == ["stopping"]
    with pytest.raises(KeyboardInterrupt):
        ctrl_c(signal.SIGINT, None)
    term = StopOnSignal()
    term(signal.SIGTERM, None)
    term(signal.SIGTERM, None)
    assert term.requested


def test_a_run_being_trained_by_another_process_is_refused(tmp_path, write_recipe):
    """Two `jadekit run` of one recipe at once: the second stops at a run the first is training (both used to train
    it, interleaving its checkpoints and metrics), before it claims anything, and --force deletes nothing."""
    from filelock import FileLock

    recipe = write_recipe(tmp_path, steps=6)
    run_dir = tmp_path / RUN_DIR
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        (run_dir / "final.json").unlink()  # unfinished: a rerun would resume it
        before = {p: p.read_bytes() for p in sorted((tmp_path / "out").rglob("*")) if p.is_file()}
        with FileLock(run_dir / ".training.lock"):  # as the process training it holds it
            second = run_cli(["run", str(recipe), "--resume", "--set", "train.lr=0.01"])
            forced = run_cli(["run", str(recipe), "--force"])
        after = {p: p.read_bytes() for p in sorted((tmp_path / "out").rglob("*")) if p.is_file()}
        released = run_cli(["run", str(recipe)])
    for result in (second, forced):
        said = " ".join(result.output.split())
        assert result.exit_code == 2 and "is being trained by another jadekit process right now" in said, said
    assert after == before  # the marker too: the refused --resume claimed nothing
    assert released.exit_code == 0 and "resuming at step 6" in released.output


def test_a_refused_rerun_adds_no_lock_file(tmp_path, write_recipe):
    """The probe for another process training a run leaves no `.training.lock` in a directory that had none: a
    refused rerun changes no file."""
    recipe = write_recipe(tmp_path, steps=6)
    run_dir = tmp_path / RUN_DIR
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        (run_dir / "final.json").unlink()
        (run_dir / ".training.lock").unlink()  # as a run trained by a version without the lock, or copied elsewhere
        before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*"))
        refused = run_cli(["run", str(recipe), "--resume", "--set", "model.classifier_hidden=[64]"])
    assert refused.exit_code == 2 and "does not fit this recipe" in refused.output, refused.output
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "out").rglob("*")) == before


def test_a_stop_asked_between_runs_starts_no_further_run(tmp_path, write_recipe):
    """Ctrl-C while a run is scored on the test sets (after its last step): that run finishes, the next does not
    start (it used to start, checkpoint at its first step and stop there)."""
    from jadekit.build import load_resolved
    from jadekit.errors import Interrupted
    from jadekit.runner import RunEvents, run_recipe

    recipe = write_recipe(tmp_path, steps=6)
    done: list[tuple[str, int]] = []
    with contextlib.chdir(tmp_path):
        resolved = load_resolved(recipe, ["experiment.seeds=[0, 1]"])
        with pytest.raises(Interrupted, match=r"stopped before jade seed 1: 1 run\(s\) not started"):
            run_recipe(resolved, events=RunEvents(on_done=lambda m, s, f: done.append((m, s))),
                       stop_requested=lambda: bool(done))
    assert done == [("jade", 0)] and (tmp_path / RUN_DIR / "final.json").exists()
    assert not (tmp_path / "out" / "jade" / "seed-1").exists()


def test_foreign_output_dir_needs_force_or_resume(tmp_path, write_recipe):
    recipe = write_recipe(tmp_path, steps=6)
    out = tmp_path / "out"
    (out / "jade" / "seed-0").mkdir(parents=True)
    (out / "jade" / "seed-0" / "final.json").write_text('{"steps": 6}')
    io.atomic_write_json(out / "jadekit-output.json", {"recipe_fingerprint": "0123456789abcdef"})
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 2
        forced = run_cli(["run", str(recipe), "--force"])
        assert forced.exit_code == 0, forced.output
        assert "skipped" not in forced.output  # the foreign run was discarded, not taken as finished
        longer = ["run", str(recipe), "--set", "train.steps=8"]
        refused = run_cli(longer)
        resumed = run_cli([*longer, "--resume"])
    assert refused.exit_code == 2 and "different recipe" in refused.output
    assert "(train.steps 6 -> 8)" in " ".join(refused.output.split())  # what changed, not two hashes
    assert resumed.exit_code == 0 and "resuming at step 6" in resumed.output
    assert train_steps(out / "jade" / "seed-0") == list(range(1, 9))


def test_force_discards_run_directories_only(tmp_path, write_recipe):
    """--force into a folder that is not (only) jadekit's deletes old runs, not a user's folder named like a method."""
    recipe = write_recipe(tmp_path, steps=6)
    work = tmp_path / "work"
    (work / "jade" / "seed-3").mkdir(parents=True)
    (work / "jade" / "__init__.py").write_text("x = 1")  # a Python package called jade
    (work / "jade" / "seed-3" / "notes.txt").write_text("mine")
    (work / "paired" / "seed-7").mkdir(parents=True)
    (work / "paired" / "seed-7" / "final.json").write_text('{"steps": 6}')  # an old run
    with contextlib.chdir(tmp_path):
        empty = run_cli(["run", str(recipe), "--set", 'experiment.output_dir=""', "--force"])
        refused = run_cli(["run", str(recipe), "--set", f'experiment.output_dir="{work.as_posix()}"'])
        forced = run_cli(["run", str(recipe), "--set", f'experiment.output_dir="{work.as_posix()}"', "--force"])
    assert empty.exit_code == 2 and "experiment.output_dir: empty: name a folder" in empty.output
    assert refused.exit_code == 2 and "is not a jadekit output directory" in refused.output
    assert forced.exit_code == 0, forced.output
    assert (work / "jade" / "__init__.py").read_text() == "x = 1" and (work / "jade" / "seed-3" / "notes.txt").exists()
    assert not (work / "paired").exists() and (work / "jade" / "seed-0" / "final.json").exists()


@pytest.mark.parametrize("content", ["", "{", "[1, 2]"])
def test_a_damaged_output_marker_is_named_and_resume_continues(tmp_path, write_recipe, content):
    recipe = write_recipe(tmp_path, steps=6)
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        (tmp_path / "out" / "jadekit-output.json").write_text(content)
        refused = run_cli(["run", str(recipe)])
        resumed = run_cli(["run", str(recipe), "--resume"])
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "jadekit-output.json is damaged or unreadable (it names no recipe)" in said
    assert "fix: pass --resume to continue its runs with this recipe" in said
    assert resumed.exit_code == 0 and "finished earlier, skipped" in resumed.output


def test_an_option_added_since_the_runs_is_no_change_at_its_default(tmp_path, write_recipe):
    """An output directory written before `train.primary_sampling` existed (its marker lacks the key) is this
    recipe's as long as the option stays at its default: a rerun skips the finished runs; a real change is named."""
    recipe = write_recipe(tmp_path, steps=6)
    out = tmp_path / "out"
    marker = out / "jadekit-output.json"
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        written = json.loads(marker.read_text())
        del written["recipe"]["train"]["primary_sampling"]  # as jadekit 0.3 recorded it
        io.atomic_write_json(marker, {**written, "recipe_fingerprint": "0123456789abcdef"})
        again = run_cli(["run", str(recipe)])
        io.atomic_write_json(marker, {**written, "recipe_fingerprint": "0123456789abcdef"})
        balanced = run_cli(["run", str(recipe), "--set", 'train.primary_sampling="class_balanced"'])
        threads = run_cli(["run", str(recipe), "--set", "train.threads=2"])  # where it runs, like train.device
        recorded_threads = {**written["recipe"], "train": {**written["recipe"]["train"], "threads": 1}}  # as 0.3 did
        io.atomic_write_json(marker, {**written, "recipe": recorded_threads, "recipe_fingerprint": "0123456789abcdef"})
        old_threads = run_cli(["run", str(recipe)])
        retired = {**written["recipe"], "train": {**written["recipe"]["train"], "threads": 1, "retired_option": 3}}
        io.atomic_write_json(marker, {**written, "recipe": retired, "recipe_fingerprint": "0123456789abcdef"})
        unreadable = run_cli(["run", str(recipe)])  # a key this version does not know: named, threads not
        io.atomic_write_json(marker, {**written, "recipe": {**written["recipe"], "experiment": None},
                                      "recipe_fingerprint": "0123456789abcdef"})
        damaged = run_cli(["run", str(recipe)])
    assert again.exit_code == 0 and "skipped" in again.output, again.output
    assert threads.exit_code == 0 and "skipped" in threads.output, threads.output
    assert old_threads.exit_code == 0 and "skipped" in old_threads.output, old_threads.output
    assert unreadable.exit_code == 2 and "train.retired_option 3 -> null)" in " ".join(unreadable.output.split())
    assert "threads" not in unreadable.output
    assert damaged.exit_code == 2 and "different recipe" in damaged.output and "Traceback" not in damaged.output
    assert balanced.exit_code == 2 and "different recipe" in balanced.output
    assert 'train.primary_sampling "shuffled" -> "class_balanced")' in " ".join(balanced.output.split())


def test_a_refused_run_changes_nothing_in_the_output_dir(tmp_path, write_recipe):
    recipe = write_recipe(tmp_path, steps=6)
    out = tmp_path / "out"
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        other_model = run_cli(["run", str(recipe), "--resume", "--set", "train.steps=8",
                               "--set", "model.classifier_hidden=[7]"])
        shorter = run_cli(["run", str(recipe), "--resume", "--set", "train.steps=4"])
        both = run_cli(["run", str(recipe), "--resume", "--force"])
        after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        again = run_cli(["run", str(recipe)])
    assert other_model.exit_code == 2 and "does not fit this recipe's model" in other_model.output, other_model.output
    assert shorter.exit_code == 2, shorter.output
    assert "at step 6, past this recipe's train.steps = 4" in " ".join(shorter.output.split())
    assert both.exit_code == 2 and "opposite" in both.output
    assert after == before  # the marker too: the original recipe still owns the directory
    assert again.exit_code == 0 and "finished earlier, skipped" in again.output


def test_resume_may_switch_the_auxiliary_sampler(tmp_path, write_recipe):
    """A class-matched run's checkpoint has no shuffled-order state: --resume starts a shuffled order from there
    (it failed with KeyError 'aux_perm', after the output directory had been claimed for the new recipe)."""
    recipe = write_recipe(tmp_path, steps=6)
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        switched = run_cli(["run", str(recipe), "--resume", "--set", "train.steps=8",
                            "--set", 'train.auxiliary_sampling="shuffled"'])
    assert switched.exit_code == 0 and "resuming at step 6" in switched.output, switched.output
    assert train_steps(tmp_path / RUN_DIR) == list(range(1, 9))


def test_resume_with_another_recipe_names_the_finished_runs_it_keeps(tmp_path, write_recipe):
    """--resume continues unfinished runs with a changed recipe; a run that already finished is not retrained, and
    the user is told it was trained with the old recipe (it used to be skipped as if it were this recipe's)."""
    recipe = write_recipe(tmp_path, steps=6)
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        same = run_cli(["run", str(recipe), "--resume"])
        changed = run_cli(["run", str(recipe), "--resume", "--set", "train.lr=0.01"])
    assert same.exit_code == 0 and "finished earlier, skipped" in same.output and "warning" not in same.output
    said = " ".join(changed.output.split())
    assert changed.exit_code == 0 and "jade seed 0: finished earlier, skipped" in said, changed.output
    assert "warning: it was trained with another recipe (train.lr 0.001 -> 0.01): kept as trained" in said
    assert "--force retrains every run with this recipe" in said


def test_resume_refuses_data_files_changed_since_the_run_started(tmp_path, write_tiny_recipe, data_root):
    """Same labels (so the same draw), one pixel changed: the run's provenance.json, written when it started, names
    the file; nothing in the output directory changes."""
    data = tmp_path / "data"
    shutil.copytree(data_root, data)
    recipe = write_tiny_recipe(tmp_path / "recipe.toml", "out", data, experiment={"methods": ["jade"]},
                               model={"classifier_hidden": [32]}, train={"steps": 6, "batch_size": 16, "eval_every": 3})
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        images = data / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
        raw = gzip.decompress(images.read_bytes())
        images.write_bytes(gzip.compress(raw[:-1] + bytes([(raw[-1] + 1) % 256])))
        out = tmp_path / "out"
        before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
        refused = run_cli(["run", str(recipe), "--resume", "--set", "train.steps=8"])
        after = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
    said = " ".join(refused.output.split())
    assert refused.exit_code == 2 and "started training on other contents of t10k-images-idx3-ubyte.gz" in said, said
    assert "fix: restore the files it was trained on; if they hold the same data" in said and "--force" in said
    assert after == before


def test_seeds_started_together_can_claim_one_new_output_dir(tmp_path, write_recipe):
    recipe = load_recipe(write_recipe(tmp_path, steps=6))
    with contextlib.chdir(tmp_path):
        out = Path(recipe.experiment.output_dir)
        out.mkdir()
        (out / ".jadekit-output.json.k3x9.tmp").write_text("{")  # a sibling's marker, mid atomic write
        check_output_dir(recipe, resume=False, force=False)
        assert json.loads((out / "jadekit-output.json").read_text())["recipe_fingerprint"] == recipe_fingerprint(recipe)
        (out / "jadekit-output.json").unlink()
        (out / "notes.txt").write_text("someone else's")
        with pytest.raises(RunDirError, match="is not a jadekit output directory"):
            check_output_dir(recipe, resume=False, force=False)


# --- durable files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("broken", ["replace", "fsync", "write"])
def test_atomic_write_crash_keeps_previous_file(tmp_path, monkeypatch, broken):
    path = tmp_path / "final.json"
    io.atomic_write_json(path, {"good": 1})
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    if broken == "write":
        monkeypatch.setattr(io.os, "fdopen", lambda fd, mode: _Crashing(fd))
    else:
        monkeypatch.setattr(io.os, broken, crash)
    with pytest.raises(OSError, match="No space left"):
        io.atomic_write_json(path, {"good": 2, "padding": "x" * 10_000})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["final.json"]  # no temp file left behind


class _Crashing:
    """A file object whose write dies half-way, like a kill or a full disk."""

    def __init__(self, fd: int) -> None:
        self.f = open(fd, "wb")  # noqa: SIM115

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.f.close()

    def write(self, data: bytes) -> None:
        self.f.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")


def test_checkpoint_crash_mid_save_keeps_a_loadable_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    io.save_checkpoint(path, {"step": 1, "w": torch.arange(4.0)})
    io.save_checkpoint(path, {"step": 2, "w": torch.arange(4.0) * 2})
    monkeypatch.setattr(io.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        io.save_checkpoint(path, {"step": 3, "w": torch.zeros(4)})
    monkeypatch.undo()
    state, notes = io.load_checkpoint(path)
    # the newest good file was rotated to .prev before the crash: it is what loads, never the older one
    assert state["step"] == 2 and torch.equal(state["w"], torch.arange(4.0) * 2)
    assert notes == [f"checkpoint {path} is missing"] and (tmp_path / "checkpoint.pt.prev").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt.prev"]  # no temp file left


def test_torn_jsonl_line_is_skipped_and_truncation_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.jsonl"
    for step in range(1, 6):
        io.append_jsonl(path, {"step": step, "kind": "train"})
    with open(path, "a") as f:
        f.write('{"step": 6, "ki')
    assert [r["step"] for r in io.read_jsonl(path)] == [1, 2, 3, 4, 5]
    before = path.read_bytes()
    with monkeypatch.context() as m:  # a crash (full disk) as the rewritten file is put in place
        m.setattr(io.os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError(28, "No space left on device")))
        with pytest.raises(OSError):
            io.truncate_jsonl(path, lambda r: r["step"] <= 3)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # old file, no temp
    assert io.truncate_jsonl(path, lambda r: r["step"] <= 3) == (2, 0)  # two past step 3; the torn last line is no damage
    assert path.read_text().splitlines() == [json.dumps({"step": s, "kind": "train"}) for s in (1, 2, 3)]


def test_a_damaged_metrics_line_before_the_last_is_named_on_resume(tmp_path, write_recipe):
    """A torn last line is what a crash leaves; a damaged line before it (disk damage, an editor) loses its record,
    and the resume says so instead of dropping it silently."""
    recipe = write_recipe(tmp_path, steps=10)
    run_dir = tmp_path / RUN_DIR
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        (run_dir / "final.json").unlink()  # unfinished again: it resumes at its last checkpoint, step 10
        lines = (run_dir / "metrics.jsonl").read_bytes().splitlines(keepends=True)
        lines[2] = b'{"step": 3, "ki\xff\n'  # not JSON, and not UTF-8 either
        (run_dir / "metrics.jsonl").write_bytes(b"".join(lines))
        result = run_cli(["run", str(recipe)])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "1 damaged line(s) before its last, dropped: those records are lost" in said, said
    assert 3 not in train_steps(run_dir) and len(train_steps(run_dir)) == 9


# --- checksummed checkpoints -------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_checkpoint_falls_back_to_prev_and_is_named(tmp_path, damage):
    path = tmp_path / "checkpoint.pt"
    io.save_checkpoint(path, {"step": 5, "w": torch.ones(64)})
    io.save_checkpoint(path, {"step": 10, "w": torch.full((64,), 2.0)})
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":  # a bit flip inside the tensor data: only the checksum can tell
        pos = bytes(raw).find(np.full(64, 2.0, np.float32).tobytes())
        raw[pos + 9] ^= 0x01
    else:
        raw = bytearray(b"not a checkpoint at all")
    path.write_bytes(bytes(raw))
    state, notes = io.load_checkpoint(path)
    assert state["step"] == 5
    assert len(notes) == 1 and str(path) in notes[0]
    if damage == "flip":
        assert "checksum" in notes[0]


def test_both_checkpoints_damaged_is_a_clear_error(tmp_path):
    path = tmp_path / "checkpoint.pt"
    io.save_checkpoint(path, {"step": 5})
    io.save_checkpoint(path, {"step": 10})
    for p in (path, path.with_suffix(".pt.prev")):
        p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(RunDirError, match=r"checkpoint\.pt is unreadable.*checkpoint\.pt\.prev is unreadable"):
        io.load_checkpoint(path)


def test_checkpoint_is_loaded_without_unpickling_code(tmp_path):
    """A checkpoint whose pickle would run code (here: create a file) is refused as unreadable, and the code never ran."""
    path, ran = tmp_path / "checkpoint.pt", tmp_path / "code-ran"
    torch.save({"state": {"step": 1, "evil": _Evil(ran)}, "sha256": "0"}, path)
    with pytest.raises(RunDirError, match=r"unreadable \(truncated or corrupt"):
        io.load_checkpoint(path)
    assert not ran.exists()


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_run_resumes_from_prev_when_newest_is_corrupt(tmp_path, write_recipe):
    recipe = write_recipe(tmp_path, steps=10)
    run_dir = tmp_path / RUN_DIR
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        reference = json.loads((run_dir / "final.json").read_text())
        weights = final_weights(run_dir)
        (run_dir / "final.json").unlink()  # as if killed right after the last checkpoint
        ckpt = run_dir / "checkpoint.pt"
        ckpt.write_bytes(ckpt.read_bytes()[:-100])
        result = run_cli(["run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert "checkpoint.pt is unreadable" in result.output and "resuming at step 5" in result.output
    assert result.output.count("checkpoint.pt is unreadable") == 1  # shown once, as a warning (it was also logged)
    assert (run_dir / "checkpoint.pt.corrupt").exists()
    resumed = json.loads((run_dir / "final.json").read_text())
    assert resumed["primary_test_error"] == reference["primary_test_error"]
    assert all(torch.equal(weights[k], v) for k, v in final_weights(run_dir).items())
    assert train_steps(run_dir) == list(range(1, 11))


def test_a_resumed_run_without_its_indices_json_gets_it_back(tmp_path, write_recipe):
    recipe = write_recipe(tmp_path, steps=6)
    run_dir = tmp_path / RUN_DIR
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        drawn = (run_dir / "indices.json").read_text()
        for name in ("final.json", "indices.json"):  # unfinished, and its record of the draw deleted
            (run_dir / name).unlink()
        result = run_cli(["run", str(recipe)])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "indices.json was missing: rewritten from this recipe's draw for seed 0" in said
    assert (run_dir / "indices.json").read_text() == drawn


def test_a_resume_with_another_thread_count_says_the_last_bits_will_differ(tmp_path, write_recipe):
    recipe = write_recipe(tmp_path, steps=6)
    threads = torch.get_num_threads()  # train.threads sets this process's count: the later tests keep theirs
    try:
        with contextlib.chdir(tmp_path):
            assert run_cli(["run", str(recipe), "--set", "train.threads=2"]).exit_code == 0
            same = run_cli(["run", str(recipe), "--resume", "--set", "train.steps=7", "--set", "train.threads=2"])
            fewer = run_cli(["run", str(recipe), "--resume", "--set", "train.steps=8", "--set", "train.threads=1"])
    finally:
        torch.set_num_threads(threads)
    assert same.exit_code == 0 and "CPU thread(s)" not in same.output, same.output
    said = " ".join(fewer.output.split())
    assert fewer.exit_code == 0 and "resumed on cpu with 1 CPU thread(s), where it ran on cpu with 2" in said, said
    assert "set train.threads to keep them equal" in said


def test_a_resume_on_a_cpu_with_other_kernels_says_the_last_bits_will_differ(tmp_path, write_recipe):
    """Runs repeat bit for bit only on the same CPU kernel set (AVX2 and AVX512 round differently): provenance.json
    records it, and a resume on another says so, as for another thread count."""
    recipe = write_recipe(tmp_path, steps=6)
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        provenance = next(tmp_path.rglob("provenance.json"))
        recorded = json.loads(provenance.read_text())
        assert recorded["versions"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
        same = run_cli(["run", str(recipe), "--resume", "--set", "train.steps=7"])
        recorded["versions"]["cpu_capability"] = "NEON-ELSEWHERE"
        provenance.write_text(json.dumps(recorded))
        other = run_cli(["run", str(recipe), "--resume", "--set", "train.steps=8"])
    assert same.exit_code == 0 and "kernels" not in same.output, same.output
    said = " ".join(other.output.split())
    assert other.exit_code == 0, other.output
    assert (f"resumed on a CPU with {torch.backends.cpu.get_cpu_capability()} kernels, where it ran with "
            "NEON-ELSEWHERE: the result equals an uninterrupted run's up to float rounding") in said, said


# --- NaN guard ---------------------------------------------------------------------------------------


def test_nan_loss_exits_3_names_term_and_step_and_keeps_checkpoint(tmp_path, write_recipe):
    recipe = write_recipe(tmp_path)
    run_dir = tmp_path / RUN_DIR
    with contextlib.chdir(tmp_path):
        result = run_cli(["run", str(recipe), "--set", "train.lr=1e30", "--set", "train.checkpoint_every=1"])
    assert result.exit_code == 3, result.output
    import re

    m = re.search(r"loss term '(\w+)' became (nan|inf|-inf) at step (\d+)", result.output)
    assert m, result.output
    kept = re.search(r"last good checkpoint \(.*checkpoint\.pt, step (\d+)\) is kept", result.output)
    assert kept, result.output
    assert "lower train.lr" in result.output and "warm-up" in result.output
    state, notes = io.load_checkpoint(run_dir / "checkpoint.pt")
    assert notes == [] and state["loop"]["step"] == int(kept.group(1)) < int(m.group(3))
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (run_dir / "final.json").exists()


def test_nan_loss_before_any_checkpoint_says_so_and_its_fix_works(tmp_path, write_recipe, reference):
    recipe = write_recipe(tmp_path)
    with contextlib.chdir(tmp_path):
        result = run_cli(["run", str(recipe), "--set", "train.lr=1e30", "--set", "train.checkpoint_every=1000"])
        text = " ".join(result.output.split())
        assert result.exit_code == 3, result.output
        assert "no checkpoint had been written yet" in text and "then rerun with --resume" in text
        # as the fix says: the recipe changed back (the lr), so the output directory needs --resume
        assert run_cli(["run", str(recipe)]).exit_code == 2
        result = run_cli(["run", str(recipe), "--resume"])
    assert result.exit_code == 0, result.output
    assert_same_run(reference, tmp_path / RUN_DIR)  # started over: the uninterrupted run, bit for bit
    assert train_steps(tmp_path / RUN_DIR) == list(range(1, 41))


def test_resume_takes_the_new_lr_and_divergence_keeps_the_checkpoint(tmp_path, write_recipe):
    recipe = write_recipe(tmp_path, steps=10)
    run_dir = tmp_path / RUN_DIR
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        before = final_weights(run_dir)
        result = run_cli(["run", str(recipe), "--resume", "--set", "train.steps=20", "--set", "train.lr=1e30"])
    assert result.exit_code == 3, result.output
    assert "train.lr 0.001 -> 1e+30" in result.output  # the optimizer state did not silently keep the old rate
    assert "checkpoint.pt, step 10) is kept" in result.output
    after = final_weights(run_dir)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_resume_takes_the_new_weight_decay_into_the_optimizer_state(tmp_path, write_recipe):
    """The optimizer's saved param groups would otherwise keep the old weight decay without a word."""
    recipe = write_recipe(tmp_path, steps=6)
    run_dir = tmp_path / RUN_DIR
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        result = run_cli(["run", str(recipe), "--resume", "--set", "train.steps=8", "--set", "train.weight_decay=0.01"])
    assert result.exit_code == 0 and "train.weight_decay 0 -> 0.01" in result.output, result.output
    state, _ = io.load_checkpoint(run_dir / "checkpoint.pt")
    assert state["loop"]["step"] == 8
    assert {g["weight_decay"] for g in state["optimizer"]["param_groups"]} == {0.01}


# --- the CLI's last line of defence ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "code", "phrase"),
    [
        (KeyboardInterrupt(), 130, "interrupted by Ctrl-C"),
        (OSError(28, "No space left on device", "/x/checkpoint.pt"), 2, "(/x/checkpoint.pt): No space left on device"),
        (PermissionError(13, "Permission denied"), 2, "Permission denied"),
        (ValueError("plugin [bug]"), 1, "unexpected ValueError: plugin [bug]"),
    ],
    ids=["second-ctrl-c", "disk-full", "read-only", "unexpected"],
)
def test_user_errors_never_shows_a_traceback(monkeypatch, capsys, exc, code, phrase):
    import typer

    from jadekit.cli import user_errors

    monkeypatch.delenv("JADEKIT_DEBUG", raising=False)
    with pytest.raises(typer.Exit) as e, user_errors():
        raise exc
    assert e.value.exit_code == code
    text = " ".join(capsys.readouterr().err.split())
    assert phrase in text and "Traceback" not in text


def test_debug_env_shows_the_traceback_of_unexpected_errors(monkeypatch):
    from jadekit.cli import user_errors

    monkeypatch.setenv("JADEKIT_DEBUG", "1")
    with pytest.raises(ValueError), user_errors():
        raise ValueError("bug")


def test_checkpoint_holds_the_cuda_rng_state_of_the_run_device_and_restores_it_on_any_index(monkeypatch, tmp_path,
                                                                                            write_recipe):
    """A run trained on cuda:1 (e.g. a --jobs worker) may resume on cuda:0, or on a machine with fewer GPUs."""
    from types import SimpleNamespace

    from jadekit.trainer import Trainer

    states = {0: torch.tensor([0], dtype=torch.uint8), 1: torch.tensor([1], dtype=torch.uint8)}
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: states[device.index])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state[0]), str(device))))

    def trainer(device: str) -> Trainer:
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        sampler = SimpleNamespace(state_dict=dict, load_state_dict=lambda state: None)
        return Trainer(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0), sampler,
                       device=torch.device(device))

    recipe = load_recipe(write_recipe(tmp_path))
    saved = trainer("cuda:1").state_dict(recipe)
    assert int(saved["rng"]["cuda"][0]) == 1
    trainer("cuda:0").load_state_dict(saved)
    assert restored == [(1, "cuda:0")]
    old = {**saved, "rng": {**saved["rng"], "cuda": [states[0], states[1]]}}  # jadekit <= 0.3: every GPU's state
    trainer("cuda:1").load_state_dict(old)
    trainer("cuda:3").load_state_dict(old)  # more GPUs then than now: nothing to restore, no crash
    assert restored == [(1, "cuda:0"), (1, "cuda:1")]
    assert "cuda" not in trainer("cpu").state_dict(recipe)["rng"]


def test_a_resume_on_another_labelled_draw_is_refused_and_a_resume_rewrites_the_run_recipe(tmp_path, write_recipe):
    recipe = write_recipe(tmp_path, steps=6)
    run_dir = tmp_path / RUN_DIR
    with contextlib.chdir(tmp_path):
        assert run_cli(["run", str(recipe)]).exit_code == 0
        longer = ["run", str(recipe), "--resume", "--set", "train.steps=8"]
        drawn = json.loads((run_dir / "indices.json").read_text())
        other = {**drawn, "primary": {**drawn["primary"], "train": drawn["primary"]["train"][::-1]}}
        io.atomic_write_json(run_dir / "indices.json", other)  # as if the data or jadekit's draw had changed
        marker = (tmp_path / "out" / "jadekit-output.json").read_bytes()
        refused = run_cli(longer)
        assert (tmp_path / "out" / "jadekit-output.json").read_bytes() == marker
        io.atomic_write_json(run_dir / "indices.json", drawn)
        resumed = run_cli(longer)
    assert refused.exit_code == 2 and "another labelled subset" in refused.output, refused.output
    assert resumed.exit_code == 0, resumed.output
    assert load_recipe(run_dir / "recipe.toml").train.steps == 8  # eval judges the run against what trained it
