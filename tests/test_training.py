"""End-to-end: `jadekit run` on tiny USPS/MNIST files in the real formats; the run directory it writes."""

from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from jadekit.cli import app
from jadekit.config import load_recipe
from jadekit.engine.loop import LoopPlan, fit

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("single", "paired", "jade")
RUN_FILES = ("recipe.toml", "indices.json", "metrics.jsonl", "checkpoint.pt", "final.json", "provenance.json")
runner = CliRunner()


def run_cli(*args: str):
    return runner.invoke(app, ["run", *map(str, args)])


@pytest.fixture(scope="module")
def tiny_run(write_tiny_recipe, tmp_path_factory) -> tuple[Path, Path]:
    """One `jadekit run` of every method on the tiny data: (recipe path, output dir)."""
    tmp = tmp_path_factory.mktemp("run")
    recipe = write_tiny_recipe(tmp / "tiny.toml", tmp / "runs")
    res = run_cli(recipe)
    assert res.exit_code == 0, res.output
    return recipe, tmp / "runs"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("method", METHODS)
def test_loss_decreases(tiny_run, method):
    rows = read_jsonl(tiny_run[1] / method / "seed-0" / "metrics.jsonl")
    totals = [r["total"] for r in rows if r["kind"] == "train"]
    assert len(totals) == 30
    first, last = sum(totals[:5]) / 5, sum(totals[-5:]) / 5
    assert last < 0.95 * first, (first, last)


@pytest.mark.parametrize("method", METHODS)
def test_run_directory_files(tiny_run, method):
    recipe_path, out = tiny_run
    run = out / method / "seed-0"
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    assert (run / "checkpoint.pt.prev").is_file()  # 30 steps, checkpoint every 10: a predecessor exists
    # the resolved recipe re-loads to the same recipe
    assert load_recipe(run / "recipe.toml") == load_recipe(recipe_path)


@pytest.mark.parametrize("method", METHODS)
def test_metrics_log_every_term(tiny_run, method):
    rows = read_jsonl(tiny_run[1] / method / "seed-0" / "metrics.jsonl")
    train = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 31))
    expected = {"single": {"ce_primary"}, "paired": {"ce_primary", "ce_auxiliary"},
                "jade": {f"{k}_{d}" for k in ("recon", "ce", "kl") for d in ("primary", "auxiliary")} | {"kl_match"}}
    assert set(train[0]) == {"step", "kind", "total"} | expected[method]
    val = [r for r in rows if r["kind"] == "val"]
    assert [r["step"] for r in val] == [10, 20, 30]
    assert all({"accuracy", "error", "improved"} <= set(r) for r in val)


@pytest.mark.parametrize("method", METHODS)
def test_final_json(tiny_run, method):
    final = json.loads((tiny_run[1] / method / "seed-0" / "final.json").read_text())
    assert final["method"] == method and final["seed"] == 0 and final["steps"] == 30
    assert 0.0 <= final["primary_test_error"] <= 100.0
    if method == "single":
        assert final["auxiliary_test_error"] is None
    else:
        assert 0.0 <= final["auxiliary_test_error"] <= 100.0
    assert final["best_step"] in (10, 20, 30)
    assert final["n_primary"] == {"train": 40, "val": 10, "test": 100}  # 5 per class, a fifth for validation
    assert final["n_auxiliary"] == {"train": 200, "val": 0, "test": 200}
    modules = {"single": {"primary_encoder", "classifier"}, "paired": {"primary_encoder", "auxiliary_encoder", "classifier"},
               "jade": {"primary_encoder", "auxiliary_encoder", "primary_decoder", "auxiliary_decoder", "classifier"}}
    assert set(final["parameters"]) == modules[method] | {"total"}
    assert final["steps_per_second"] > 0


@pytest.mark.parametrize("method", METHODS)
def test_checkpoint_loads_weights_only(tiny_run, method):
    ckpt = torch.load(tiny_run[1] / method / "seed-0" / "checkpoint.pt", weights_only=True)
    assert set(ckpt) >= {"state", "sha256"}
    state = ckpt["state"]
    assert set(state) >= {"model", "optimizer", "scheduler", "sampler", "loop", "rng", "recipe"}
    assert state["loop"]["step"] == 30 and state["loop"]["best_model"] is not None
    assert state["recipe"]["experiment"]["name"] == "tiny"
    assert all(isinstance(v, torch.Tensor) for v in state["model"].values())


@pytest.mark.parametrize("method", ["single", "paired", "jade"])
def test_models_pickle_and_the_copy_loads_old_checkpoints(tiny_recipe, method):
    """Models cross process boundaries (parallel runs, one per process or device): pickling keeps the
    weights and the hook that reads jadekit 0.1's decoder layout."""
    from jadekit.build import build_model, load_resolved
    from jadekit.engine.layers import literal_form

    model = build_model(method, load_resolved(tiny_recipe))
    copy = pickle.loads(pickle.dumps(model))
    for k, v in model.state_dict().items():
        assert torch.equal(copy.state_dict()[k], v)
    copy.load_state_dict(literal_form(model).state_dict())  # 0.1's layout, strict


def test_indices_recorded(tiny_run, tiny_data_root):
    from jadekit.data.base import NoParams
    from jadekit.data.usps import USPS

    labels = USPS().load(tiny_data_root, "train", NoParams(), download=False).labels
    for method in METHODS:
        idx = json.loads((tiny_run[1] / method / "seed-0" / "indices.json").read_text())
        tr, va = idx["primary"]["train"], idx["primary"]["val"]
        assert set(tr).isdisjoint(va) and len(tr) == 40 and len(va) == 10
        assert torch.bincount(labels[tr], minlength=10).tolist() == [4] * 10
        assert torch.bincount(labels[va], minlength=10).tolist() == [1] * 10
        assert len(idx["auxiliary"]["train"]) == 200 and idx["auxiliary"]["val"] == []
    # the same seed draws the same subset for every method
    drawn = {m: json.loads((tiny_run[1] / m / "seed-0" / "indices.json").read_text()) for m in METHODS}
    assert drawn["single"] == drawn["paired"] == drawn["jade"]


def test_provenance(tiny_run):
    prov = json.loads((tiny_run[1] / "jade" / "seed-0" / "provenance.json").read_text())
    assert prov["seed"] == 0 and prov["method"] == "jade" and prov["device"] == "cpu"
    assert {"python", "torch", "jadekit"} <= set(json.dumps(prov["versions"]).replace('"', " ").split())
    names = {Path(f).name for f in prov["data_files"]}
    assert {"usps.bz2", "usps.t.bz2", "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"} <= names
    assert all(len(v["sha256"]) == 64 for v in prov["data_files"].values())


def test_summary_files(tiny_run):
    out = tiny_run[1]
    assert (out / "jadekit-output.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["method"]: r for r in summary["rows"]}
    assert list(rows) == list(METHODS)
    for m in METHODS:
        final = json.loads((out / m / "seed-0" / "final.json").read_text())
        assert rows[m]["primary_test_error"]["mean"] == pytest.approx(final["primary_test_error"])
        assert rows[m]["seeds"] == [0]
    table = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["method"] for r in table] == list(METHODS)
    md = (out / "summary.md").read_text()
    assert all(f"| {m} |" in md for m in METHODS)


def test_same_seed_same_errors(tiny_run, write_tiny_recipe, tmp_path):
    recipe = write_tiny_recipe(tmp_path / "again.toml", tmp_path / "runs")
    res = run_cli(recipe)
    assert res.exit_code == 0, res.output
    for m in METHODS:
        a = json.loads((tiny_run[1] / m / "seed-0" / "final.json").read_text())
        b = json.loads((tmp_path / "runs" / m / "seed-0" / "final.json").read_text())
        assert (a["primary_test_error"], a["auxiliary_test_error"], a["best_step"]) == (
            b["primary_test_error"], b["auxiliary_test_error"], b["best_step"])


def test_finished_runs_are_skipped(tiny_run):
    recipe, out = tiny_run
    before = (out / "jade" / "seed-0" / "final.json").read_text()
    res = run_cli(recipe)
    assert res.exit_code == 0, res.output
    assert "finished earlier, skipped" in res.stderr
    assert (out / "jade" / "seed-0" / "final.json").read_text() == before


def test_missing_svhn_files_exit_2_without_traceback(tmp_path, tiny_data_root, monkeypatch):
    monkeypatch.setenv("JADEKIT_DATA", str(tiny_data_root))  # the auxiliary MNIST is present: no download
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli(ROOT / "recipes" / "svhn_mnist.toml", "--set", f"primary.root={empty}", "--set", "primary.download=false",
                  "--set", "auxiliary.download=false", "--set", f"experiment.output_dir={tmp_path / 'runs'}")
    assert res.exit_code == 2, res.output
    assert "SVHN train split: data files not found" in res.stderr and "SVHN test split" in res.stderr  # both at once
    assert str(empty / "SVHN" / "train_32x32.mat") in res.stderr
    assert "JADEKIT_DATA" in res.stderr and "download = true" in res.stderr  # the three ways to provide them
    assert "Traceback" not in res.output
    assert isinstance(res.exception, SystemExit)  # typer.Exit(2), not an uncaught error
    assert not (tmp_path / "runs" / "single").exists()


def test_bf16_autocast_path_trains_on_cpu(write_tiny_recipe, tmp_path):
    """The GPU recipe's mixed precision (bf16 autocast) runs end to end on CPU and stays finite."""
    recipe = write_tiny_recipe(tmp_path / "bf16.toml", tmp_path / "runs", experiment={"methods": ["jade"]},
                               train={"precision": "bf16", "steps": 12, "eval_every": 6})
    res = run_cli(recipe)
    assert res.exit_code == 0, res.output
    totals = [r["total"] for r in read_jsonl(tmp_path / "runs" / "jade" / "seed-0" / "metrics.jsonl") if r["kind"] == "train"]
    assert len(totals) == 12 and all(torch.isfinite(torch.tensor(totals)))


@pytest.mark.slow
def test_compiled_step_matches_eager_losses(write_tiny_recipe, tmp_path):
    """train.compile = true (torch.compile of the training forward) trains to the same losses as eager mode."""
    totals = {}
    for compiled in (False, True):
        out = tmp_path / f"runs-{compiled}"
        recipe = write_tiny_recipe(tmp_path / f"c{compiled}.toml", out, experiment={"methods": ["paired"]},
                                   model={"dropout": 0.0}, train={"compile": compiled, "steps": 5, "eval_every": 5})
        res = run_cli(recipe)
        assert res.exit_code == 0, res.output
        totals[compiled] = [r["total"] for r in read_jsonl(out / "paired" / "seed-0" / "metrics.jsonl") if r["kind"] == "train"]
    assert totals[True] == pytest.approx(totals[False], rel=1e-4)


def test_compiler_backend_failure_is_one_clear_message(write_tiny_recipe, tmp_path, monkeypatch):
    """A torch.compile backend that cannot build (e.g. no C++ compiler or Python headers) exits 2 naming the fix,
    not as an internal error with a traceback."""
    from torch._inductor.exc import CppCompileError, InductorError

    def broken_compile(fn, *args, **kwargs):
        def run(*a, **k):
            raise InductorError(CppCompileError(["g++", "kernel.cpp"], "fatal error: Python.h: No such file"), None)
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    recipe = write_tiny_recipe(tmp_path / "c.toml", tmp_path / "runs", experiment={"methods": ["jade"]},
                               train={"compile": True, "steps": 3, "eval_every": 3})
    res = run_cli(recipe)
    assert res.exit_code == 2, res.output
    assert "torch.compile could not build" in res.output and "CppCompileError" in res.output
    assert "train.compile = false" in res.output and "Traceback" not in res.output


# step 5 has the best accuracy but ties step 2 on balanced accuracy with a worse NLL: the tie goes by NLL
@pytest.mark.parametrize(("select", "kept"), [("val_accuracy", 5), ("val_nll", 4), ("val_balanced_accuracy", 2),
                                              ("last", 5)])
def test_train_select_picks_the_kept_weights(select, kept):
    """The weights kept are the best by validation accuracy (ties: NLL), by NLL (ties: accuracy), by balanced
    accuracy (ties: NLL), or the last."""
    model = torch.nn.Linear(1, 1, bias=False)
    model.loss_terms = lambda batch, w: {"total": (model.weight * 0).sum()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    # (accuracy, nll, balanced accuracy) validated after steps 1..5
    scores = [(0.8, 0.5, 0.6), (0.9, 0.4, 0.7), (0.9, 0.3, 0.6), (0.85, 0.1, 0.5), (0.95, 0.9, 0.7)]

    def validate():
        step = validate.calls = getattr(validate, "calls", 0) + 1
        with torch.no_grad():
            model.weight.fill_(step)  # the weights remember the step they were validated at
        acc, nll, balanced = scores[step - 1]
        return {"accuracy": acc, "nll": nll, "balanced_accuracy": balanced}

    state = fit(model, opt, sched, lambda: None, lambda s: None, validate, LoopPlan(5, 1, 100, select=select))
    assert state.best_step == kept
    assert state.best_model["weight"].item() == kept


def test_a_score_kept_before_balanced_accuracy_existed_is_beaten_by_any_balanced_one():
    """A resumed 0.3 checkpoint kept (accuracy, -NLL) only: with select = "val_balanced_accuracy" the first new
    validation replaces it; the other modes compare it as before."""
    old = (0.95, -0.1)
    assert LoopPlan(5, 1, 5, select="val_balanced_accuracy").better((0.5, -0.9, 0.1), old)
    assert not LoopPlan(5, 1, 5, select="val_accuracy").better((0.5, -0.9, 0.9), old)
    assert LoopPlan(5, 1, 5, select="val_nll").better((0.5, -0.05, 0.1), old)


def test_fit_takes_a_validate_that_reports_only_accuracy_and_nll():
    """`fit` is engine API (the throughput benchmark calls it): balanced accuracy is optional in what validate returns."""
    model = torch.nn.Linear(1, 1, bias=False)
    model.loss_terms = lambda batch, w: {"total": (model.weight * 0).sum()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = fit(model, opt, sched, lambda: None, lambda s: None, lambda: {"accuracy": 0.5, "nll": 1.0},
                LoopPlan(2, 1, 100))
    assert state.best_score == (0.5, -1.0) and state.best_step == 1


def test_weights_broken_by_a_finite_loss_are_never_checkpointed():
    """An update that leaves a parameter inf while every loss term is finite (a huge lr, a bad optimizer) stops the
    run at that step, naming the parameter, before the broken weights could become the checkpoint."""
    from jadekit.engine.loop import Callback
    from jadekit.errors import TrainingDiverged

    model = torch.nn.Linear(1, 1, bias=False)
    model.loss_terms = lambda batch, w: {"total": (model.weight * 0).sum()}  # finite whatever the weight

    class BreaksAtStep2(torch.optim.SGD):
        def step(self, closure=None):
            self.calls = getattr(self, "calls", 0) + 1
            if self.calls == 2:
                with torch.no_grad():
                    model.weight.fill_(float("inf"))

    class Checkpoints(Callback):
        steps: list[int] = []

        def on_checkpoint(self, state):
            self.steps.append(state.step)

    opt = BreaksAtStep2(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(TrainingDiverged, match="parameter 'weight' became non-finite at step 2"):
        fit(model, opt, sched, lambda: None, lambda s: None, lambda: {"accuracy": 0.5, "nll": 1.0},
            LoopPlan(5, 100, 1), callbacks=[Checkpoints()])
    assert Checkpoints.steps == [1]


def test_the_output_size_probe_leaves_the_model_and_the_random_stream_as_they_were():
    """A layer that initialises itself on its first input (ActNorm-style), or draws random numbers in eval mode, must
    meet the first training batch, not the probe's zeros."""
    from types import SimpleNamespace

    from jadekit.trainer import _check_output_shapes

    class InitOnFirstCall(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("initialised", torch.tensor(False))
            self.linear = torch.nn.Linear(16, 4)

        def forward(self, x):
            self.initialised.fill_(True)
            return self.linear(x.flatten(1)) + 0 * torch.rand(1)

    side = SimpleNamespace(info=SimpleNamespace(image_shape=(1, 4, 4)), backbone_name="init-net")
    resolved = SimpleNamespace(recipe=SimpleNamespace(model=SimpleNamespace(latent_dim=2, content_dim=4)),
                               primary=side, auxiliary=side)
    model = torch.nn.Module()
    model.primary_encoder = InitOnFirstCall()
    torch.manual_seed(0)
    _check_output_shapes("single", model, resolved)
    assert not model.primary_encoder.initialised and model.primary_encoder.training
    after = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(1))  # the probe drew nothing from the stream training uses


def test_progress_lines_in_a_log_file_are_not_cut(write_tiny_recipe, tmp_path):
    """Written to a file or pipe (here CliRunner's), which has no width: each run's last line keeps its whole text."""
    recipe = write_tiny_recipe(tmp_path / "tiny.toml", tmp_path / "runs",
                               experiment={"methods": ["paired"], "seeds": [123456]})  # a line over 80 columns
    res = run_cli(recipe)
    assert res.exit_code == 0, res.output
    last = [line for line in res.stderr.splitlines() if line.startswith("paired seed 123456") and "val acc" in line][-1]
    assert last.rstrip().endswith(")") and "(balanced " in last, last


def test_progress_bar_shows_the_latest_validation_at_once():
    from rich.progress import Progress

    from jadekit.cli import ProgressBar

    with Progress(disable=True) as progress:
        bar = ProgressBar(progress, "jade", 0, 10)
        bar.on_log(10, {"total": 1.5})
        bar.on_validate(10, {"accuracy": 0.75}, True)  # the run's last event: no log follows it
        assert progress.tasks[0].fields["info"] == "loss 1.500  val acc 0.750"
        bar.on_validate(10, {"accuracy": 0.875, "balanced_accuracy": 0.5}, True)  # imbalanced: both, side by side
        assert progress.tasks[0].fields["info"] == "loss 1.500  val acc 0.875 (balanced 0.500)"
