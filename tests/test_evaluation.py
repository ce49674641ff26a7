"""`jadekit eval` on run directories trained inside the test on tiny data in the real file formats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jadekit import registry
from jadekit.cli import app
from jadekit.data.base import DatasetInfo, NoParams

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, write_bar_recipe) -> Path:
    """An output directory with one tiny run of each method (over `bar_data_root`)."""
    base = tmp_path_factory.mktemp("trained")
    recipe = write_bar_recipe(base / "tiny.toml", base / "runs")
    result = runner.invoke(app, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    return base / "runs"


def eval_json(*args: str) -> dict:
    result = runner.invoke(app, ["eval", *args, "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_eval_jade_run_reports_every_metric_and_elbo(trained):
    run = trained / "jade" / "seed-0"
    out = eval_json(str(run))
    assert out["kind"] == "run" and out["method"] == "jade"
    by_domain = {r["domain"]: r for r in out["results"]}
    assert set(by_domain) == {"primary", "auxiliary"}
    final = json.loads((run / "final.json").read_text())
    assert by_domain["primary"]["error"] == pytest.approx(final["primary_test_error"], abs=1e-3)
    assert by_domain["auxiliary"]["error"] == pytest.approx(final["auxiliary_test_error"], abs=1e-3)
    p = by_domain["primary"]
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "ece", "nll", "per_class_accuracy", "confusion_matrix"):
        assert key in p
    assert p["n"] == 40 and sum(map(sum, p["confusion_matrix"])) == 40
    assert set(p["elbo"]) == {"recon", "kl", "ce", "neg_elbo"}
    assert Path(out["written_to"]).name.startswith("eval-recipe-test")


def test_eval_never_overwrites(trained):
    run = trained / "single" / "seed-0"
    first = Path(eval_json(str(run))["written_to"])
    second = Path(eval_json(str(run))["written_to"])
    assert first != second and first.exists() and second.exists()
    assert "elbo" not in json.loads(first.read_text())["results"][0]


def test_eval_output_dir_aggregates_table_1(trained):
    out = eval_json(str(trained))
    assert out["kind"] == "summary"
    assert [r["method"] for r in out["rows"]] == ["single", "paired", "jade"]
    assert all(r["primary_test_error"]["n"] == 1 for r in out["rows"])
    assert out["rows"][0]["auxiliary_test_error"]["n"] == 0
    assert "| jade |" in out["markdown"]
    assert all(Path(p).exists() for p in out["written_to"])
    assert out["metrics"]["jade"]["auxiliary"]["macro_f1"]["n"] == 1


def test_other_dataset_needs_explicit_resize(trained, bar_data_root):
    run = trained / "single" / "seed-0"
    root = str(bar_data_root)
    result = runner.invoke(app, ["eval", str(run), "--dataset", "mnist", "--root", root])
    assert result.exit_code == 2
    assert "(1, 28, 28)" in result.output and "(1, 16, 16)" in result.output and "--resize" in result.output
    assert "Traceback" not in result.output
    out = eval_json(str(run), "--dataset", "mnist", "--root", root, "--resize")
    assert out["results"][0]["dataset"] == "mnist" and out["results"][0]["n"] == 60
    assert Path(out["written_to"]).name == "eval-mnist-test.json"


def test_channel_mismatch_is_a_clear_error(trained):
    result = runner.invoke(app, ["eval", str(trained / "single" / "seed-0"), "--dataset", "svhn", "--resize"])
    assert result.exit_code == 2
    assert "3-channel" in result.output and "channels cannot be adapted" in result.output


def test_class_mismatch_is_a_clear_error(trained, monkeypatch):
    class Letters:
        Params = NoParams

        def info(self, params):
            return DatasetInfo(("a", "b"), (1, 16, 16))

    real_load = registry.datasets.load
    monkeypatch.setattr(registry.datasets, "load", lambda name: Letters() if name == "letters" else real_load(name))
    result = runner.invoke(app, ["eval", str(trained / "single" / "seed-0"), "--dataset", "letters"])
    assert result.exit_code == 2
    assert "classes ['a', 'b']" in result.output and "classes must match" in result.output


def test_missing_run_dir(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "no such run directory" in result.output


def test_directory_without_runs(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path)])
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_corrupt_checkpoint(trained, tmp_path):
    run = tmp_path / "jade" / "seed-0"
    shutil.copytree(trained / "jade" / "seed-0", run)
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    (run / "checkpoint.pt.prev").unlink(missing_ok=True)
    result = runner.invoke(app, ["eval", str(run)])
    assert result.exit_code == 2
    assert "checkpoint" in result.output and "unreadable" in result.output and "Traceback" not in result.output


def test_recipe_edited_after_training(trained, tmp_path):
    run = tmp_path / "single" / "seed-0"
    shutil.copytree(trained / "single" / "seed-0", run)
    result = runner.invoke(app, ["eval", str(run), "--set", "model.classifier_hidden=[64]"])
    assert result.exit_code == 2 and "does not fit" in result.output


def test_dataset_params_are_validated_by_the_adapter(trained):
    result = runner.invoke(app, ["eval", str(trained / "single" / "seed-0"), "--dataset", "mnist", "--param", "colour=1"])
    assert result.exit_code == 2 and "--param.colour" in result.output


def test_options_of_dataset_need_dataset(trained):
    result = runner.invoke(app, ["eval", str(trained / "single" / "seed-0"), "--resize"])
    assert result.exit_code == 2 and "apply to --dataset only" in result.output
