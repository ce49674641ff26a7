"""A recipe pairing two image-folder trees trains end to end (needs the package installed)."""

import json

import pytest
from typer.testing import CliRunner

from jadekit.cli import app
from jadekit.registry import datasets

RECIPE = """
[experiment]
name = "folders"
methods = ["single", "jade"]
seeds = [0]
output_dir = "{out}"

[primary]
dataset = "imagefolder"
root = "{root}"
labels_per_class = 2
params = {{ path = "small", classes = ["cat", "dog"], size = [28, 28], channels = 1 }}

[auxiliary]
dataset = "imagefolder"
root = "{root}"
params = {{ path = "large", classes = ["cat", "dog"], size = [28, 28], channels = 1, test_share = 0.25 }}

[model]
primary_backbone = {{ name = "paper-mnist" }}
auxiliary_backbone = {{ name = "paper-mnist" }}
classifier_hidden = [16]

[train]
steps = 2
batch_size = 4
eval_every = 2
device = "cpu"
"""


@pytest.mark.skipif("imagefolder" not in datasets.names(), reason="jadekit-imagefolder is not installed")
def test_recipe_runs_end_to_end(tmp_path, write_tree):
    write_tree(tmp_path / "small" / "train", 3, 0)
    write_tree(tmp_path / "small" / "test", 2, 1)
    write_tree(tmp_path / "large", 8, 2)
    recipe = tmp_path / "folders.toml"
    recipe.write_text(RECIPE.format(out=tmp_path / "runs", root=tmp_path))
    result = CliRunner().invoke(app, ["run", str(recipe)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "runs" / "jade" / "seed-0" / "final.json").read_text())["n_primary"]["test"] == 4
