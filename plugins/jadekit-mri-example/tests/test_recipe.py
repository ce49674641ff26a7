"""The README's scarce/abundant recipe runs end to end on synthetic cohorts (needs the package installed)."""

import json
from pathlib import Path

import pytest
from jadekit_mri_example.synthetic import write_cohort
from typer.testing import CliRunner

from jadekit.cli import app
from jadekit.registry import backbones, datasets

RECIPE = Path(__file__).parents[1] / "recipes" / "pancreas-breast.toml"


@pytest.mark.skipif("mri-slices" not in datasets.names() or "mri-cnn64" not in backbones.names(),
                    reason="jadekit-mri-example is not installed (its entry points are not registered)")
def test_recipe_runs_end_to_end(tmp_path):
    write_cohort(tmp_path / "pancreas-synth", 4, shape=(24, 24, 6), contrast=0.8, seed=1)
    write_cohort(tmp_path / "breast-synth", 6, shape=(24, 24, 6), contrast=1.2, seed=2)
    out = tmp_path / "runs"
    sets = [f"primary.root={tmp_path}", f"auxiliary.root={tmp_path}", f"experiment.output_dir={out}",
            "primary.labels_per_class=4", "train.steps=3", "train.eval_every=3"]
    result = CliRunner().invoke(app, ["run", str(RECIPE), *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    for method in ("single", "paired", "jade"):
        final = json.loads((out / method / "seed-0" / "final.json").read_text())
        assert 0.0 <= final["primary_test_error"] <= 100.0
