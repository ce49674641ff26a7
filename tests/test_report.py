"""`jadekit report`: every figure is built, embedded in the HTML and referenced by the Markdown."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jadekit.cli import app

runner = CliRunner()

JADE_FIGURES = {"curves", "probes", "pca", "fig2", "fig2_variance", "reconstructions", "swaps"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, write_bar_recipe) -> Path:
    base = tmp_path_factory.mktemp("report")
    recipe = write_bar_recipe(base / "tiny.toml", base / "runs")
    result = runner.invoke(app, ["run", str(recipe), "--set", 'experiment.methods=["single", "jade"]'])
    assert result.exit_code == 0, result.output
    return base / "runs"


def build(run: Path, out: Path) -> dict:
    result = runner.invoke(app, ["report", str(run), "--out", str(out), "--samples", "40", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def test_jade_report_has_every_figure(trained, tmp_path):
    meta = build(trained / "jade" / "seed-0", tmp_path)
    assert set(meta["figures"]) == JADE_FIGURES
    assert set(meta["probes"]) == {"class from content", "class from style", "dataset from content"}
    markdown = (tmp_path / "report.md").read_text()
    html = (tmp_path / "report.html").read_text()
    for name in meta["figures"].values():
        png = tmp_path / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in markdown
    assert html.count('src="data:image/png;base64,') == len(JADE_FIGURES)
    assert "<table>" in html and not re.search(r'(src|href)="(?!data:|#)', html)  # nothing linked from outside the page


def test_single_report_gets_the_subset_that_applies(trained, tmp_path):
    meta = build(trained / "single" / "seed-0", tmp_path)
    assert set(meta["figures"]) == {"curves", "probes", "pca"}
    assert set(meta["probes"]) == {"class from features"}


def test_a_damaged_final_json_leaves_the_test_error_line_out(trained, tmp_path):
    run = tmp_path / "single" / "seed-0"
    shutil.copytree(trained / "single" / "seed-0", run)
    assert "Primary test error" in (build(run, tmp_path / "before") and (tmp_path / "before" / "report.md").read_text())
    (run / "final.json").write_bytes(b'{"method": "sin')  # torn by hand or by a disk: the report still builds
    build(run, tmp_path / "after")
    assert "Primary test error" not in (tmp_path / "after" / "report.md").read_text()


def test_report_default_goes_into_the_run_dir(trained):
    run = trained / "single" / "seed-0"
    result = runner.invoke(app, ["report", str(run), "--samples", "40", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert (run / "report" / "report.html").exists()


def test_report_of_missing_run_dir(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such run directory" in result.output


def test_report_of_an_unfinished_run_says_so(trained, tmp_path):
    import shutil

    run = tmp_path / "jade" / "seed-0"
    shutil.copytree(trained / "jade" / "seed-0", run)
    recipe = run / "recipe.toml"
    steps = int(next(line for line in recipe.read_text().splitlines() if line.startswith("steps")).split("=")[1])
    recipe.write_text(recipe.read_text().replace(f"steps = {steps}\n", f"steps = {steps * 10}\n"))  # as if stopped early
    result = runner.invoke(app, ["report", str(run), "--samples", "40", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"unfinished: trained {steps} of {steps * 10} steps" in " ".join(result.output.split())
    assert f"Unfinished run: trained {steps} of {steps * 10} steps" in (run / "report" / "report.md").read_text()


def test_report_of_an_output_dir_names_one_of_its_runs(trained):
    result = runner.invoke(app, ["report", str(trained)])
    assert result.exit_code == 2 and "output directory of 2 runs" in result.output and "pass one of its runs" in result.output
