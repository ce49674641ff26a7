"""Recipe loading: shipped recipes, typed `--set` overrides, strictness and `jadekit check` messages."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import tomli_w
from typer.testing import CliRunner

from jadekit.build import resolve
from jadekit.config import (
    DataConfig,
    ExperimentConfig,
    LossConfig,
    ModelConfig,
    Recipe,
    TrainConfig,
    load_recipe,
    parse_override,
    read_toml,
    recipe_from_dict,
)
from jadekit.errors import RecipeError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.toml"))
SMOKE = ROOT / "recipes" / "smoke.toml"
runner = CliRunner()


def problems(exc: pytest.ExceptionInfo) -> list[str]:
    return exc.value.problems


# --- shipped recipes -------------------------------------------------------------------------


def test_recipes_are_shipped():
    assert {p.name for p in RECIPES} >= {"smoke.toml", "svhn_mnist.toml", "usps_mnist.toml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_shipped_recipes_are_valid(path):
    recipe = load_recipe(path)
    assert isinstance(recipe, Recipe)
    assert recipe.model.content_dim < recipe.model.latent_dim
    resolved = resolve(recipe, source=str(path))  # every plugin name resolves, no data needed
    assert resolved.class_names == tuple(str(d) for d in range(10))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_check_accepts_shipped_recipes(path):
    res = runner.invoke(app(), ["check", str(path)])
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("ok")


def test_paper_recipe_values():
    r = load_recipe(ROOT / "recipes" / "svhn_mnist.toml")
    assert (r.primary.dataset, r.primary.labels_per_class, r.auxiliary.dataset, r.auxiliary.limit) == ("svhn", 100, "mnist", 45000)
    assert (r.model.latent_dim, r.model.content_dim, r.model.classifier_hidden, r.model.dropout) == (20, 10, [500, 500, 500], 0.5)


def test_recipe_is_frozen():
    r = load_recipe(SMOKE)
    with pytest.raises(ValueError):
        r.train.steps = 5  # type: ignore[misc]


# --- --set overrides -------------------------------------------------------------------------


@pytest.mark.parametrize(("item", "value"), [
    ("train.steps=12", 12),
    ("train.lr=3e-4", 3e-4),
    ("train.compile=true", True),
    ("experiment.seeds=[3, 4]", [3, 4]),
    ("train.device=cpu", "cpu"),  # bare word stays a string
    ('experiment.name="quoted name"', "quoted name"),
    ("primary.root=/tmp/some where", "/tmp/some where"),
])
def test_parse_override_types(item, value):
    path, parsed = parse_override(item)
    assert path == item.partition("=")[0].split(".")
    assert parsed == value and type(parsed) is type(value)


def test_overrides_typed_through_the_model():
    r = load_recipe(SMOKE, ["train.steps=7", "train.lr=0.01", "train.compile=true", "experiment.seeds=[1, 2]",
                            "train.device=cpu", "primary.resize=[20, 20]", "model.primary_backbone.name=cnn",
                            "loss.match=class_moments", "primary.root=/data/x"])
    assert r.train.steps == 7 and isinstance(r.train.steps, int)
    assert r.train.lr == 0.01 and r.train.compile is True
    assert r.experiment.seeds == [1, 2] and r.train.device == "cpu"
    assert r.primary.resize == (20, 20) and r.model.primary_backbone.name == "cnn"
    assert r.loss.match == "class_moments" and r.primary.root == Path("/data/x")


def test_override_wrong_type_names_the_key():
    with pytest.raises(RecipeError) as e:
        load_recipe(SMOKE, ["train.steps=many", "train.lr=-1"])
    assert any(p.startswith("train.steps:") for p in problems(e))
    assert any(p.startswith("train.lr:") for p in problems(e))


@pytest.mark.parametrize(("item", "key"), [("train.stepz=3", "train.stepz"), ("model.primary_backbone.bogus=1",
                                            "model.primary_backbone.bogus"), ("nosuchtable.x=1", "nosuchtable")])
def test_unknown_key_is_an_error_with_its_path(item, key):
    with pytest.raises(RecipeError) as e:
        load_recipe(SMOKE, [item])
    assert any(p.startswith(f"{key}: unknown key") for p in problems(e)), problems(e)


@pytest.mark.parametrize("item", ["novalue", "=3", "train..steps=3"])
def test_malformed_override(item):
    with pytest.raises(RecipeError, match="expected key.path=value"):
        parse_override(item)


def test_override_into_a_non_table():
    with pytest.raises(RecipeError, match="'steps' is not a table"):
        load_recipe(SMOKE, ["train.steps.x=1"])


@pytest.mark.parametrize(("content", "latent"), [(20, 20), (21, 20)])
def test_content_dim_must_be_smaller_than_latent_dim(content, latent):
    with pytest.raises(RecipeError, match=re.escape(f"content_dim ({content}) must be smaller than latent_dim ({latent})")):
        load_recipe(SMOKE, [f"model.content_dim={content}", f"model.latent_dim={latent}"])


@pytest.mark.parametrize(("item", "key"), [
    ("train.device=gpu", "train.device"),
    ("primary.val_share=1.0", "primary.val_share"),
    ("experiment.methods=['jade', 'jade']", "experiment.methods"),
    ("experiment.methods=['vae']", "experiment.methods.0"),
    ("loss.match=mmd", "loss.match"),
    ("loss.kl_prior=-1", "loss.kl_prior"),
    ("model.dropout=1.0", "model.dropout"),
])
def test_invalid_values_name_their_key(item, key):
    with pytest.raises(RecipeError) as e:
        load_recipe(SMOKE, [item])
    assert any(p.startswith(f"{key}:") for p in problems(e)), problems(e)


def test_defaults():
    r = recipe_from_dict({"experiment": {"name": "x", "methods": ["jade"], "seeds": [0]},
                          "primary": {"dataset": "usps"}, "auxiliary": {"dataset": "mnist"},
                          "model": {"primary_backbone": {"name": "cnn"}, "auxiliary_backbone": {"name": "cnn"}},
                          "train": {"steps": 1}})
    assert r.loss == LossConfig() and r.experiment.output_dir == Path("runs")
    assert (r.model.latent_dim, r.model.content_dim, r.model.classifier_hidden) == (20, 10, [500, 500, 500])
    assert (r.train.batch_size, r.train.lr, r.train.device, r.primary.download) == (64, 1e-3, "auto", True)


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("JADEKIT_DATA", raising=False)
    assert DataConfig(dataset="mnist").data_root() == Path("~/.cache/jadekit").expanduser()
    monkeypatch.setenv("JADEKIT_DATA", str(tmp_path / "env"))
    assert DataConfig(dataset="mnist").data_root() == tmp_path / "env"
    assert DataConfig(dataset="mnist", root=tmp_path / "recipe").data_root() == tmp_path / "recipe"


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(RecipeError, match="no such recipe file"):
        read_toml(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nsteps = 3\n")
    with pytest.raises(RecipeError, match="malformed TOML"):
        read_toml(bad)


# --- jadekit check ---------------------------------------------------------------------------


def app():
    from jadekit.cli import app as typer_app

    return typer_app


def write_recipe(tmp_path: Path, **changes: dict) -> Path:
    data = read_toml(SMOKE)
    for table, values in changes.items():
        data[table] = {**data.get(table, {}), **values}
    path = tmp_path / "r.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def test_check_lists_every_plugin_problem_with_key_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("JADEKIT_DISABLE_PLUGIN_AUTOLOAD", "1")  # the built-ins only, whatever is installed
    path = write_recipe(tmp_path, primary={"dataset": "svnh"}, model={
        "primary_backbone": {"name": "paper-mnist"}, "auxiliary_backbone": {"name": "resnet-ish"}})
    res = runner.invoke(app(), ["check", str(path)])
    assert res.exit_code == 2
    assert "primary.dataset: unknown dataset 'svnh'. Available: mnist, svhn, usps." in res.stderr
    assert "model.auxiliary_backbone.name: unknown backbone 'resnet-ish'. Available: cnn, paper-mnist, paper-svhn, timm." in res.stderr
    assert "Traceback" not in res.output


def test_check_lists_every_structure_problem(tmp_path):
    path = write_recipe(tmp_path, train={"steps": "many", "stepz": 3}, model={"dropout": 2})
    res = runner.invoke(app(), ["check", str(path)])
    assert res.exit_code == 2
    for line in ("train.steps: Input should be a valid integer", "train.stepz: unknown key", "model.dropout:"):
        assert line in res.stderr, res.stderr
    assert "3 problem(s)" in res.stderr


def test_check_backbone_params_validated_by_the_plugin(tmp_path):
    res = runner.invoke(app(), ["check", str(SMOKE), "--set", "model.primary_backbone.params.x=1",
                                "--set", "model.auxiliary_backbone.name=cnn"])
    assert res.exit_code == 2
    assert "model.primary_backbone.params.x: unknown key" in res.stderr
    assert "model.auxiliary_backbone.params.filters: Field required" in res.stderr


def test_check_reports_unknown_dataset_and_bad_type_together(tmp_path, monkeypatch):
    monkeypatch.setenv("JADEKIT_DISABLE_PLUGIN_AUTOLOAD", "1")
    res = runner.invoke(app(), ["check", str(SMOKE), "--set", "primary.dataset=svnh", "--set", "train.steps=abc"])
    assert res.exit_code == 2
    assert "train.steps: Input should be a valid integer" in res.stderr
    assert "primary.dataset: unknown dataset 'svnh'. Available: mnist, svhn, usps." in res.stderr


def test_all_tables_have_descriptions():
    """docs/recipes.md can be derived from the models: every field carries a description (or is a sub-table)."""
    for model in (ExperimentConfig, DataConfig, ModelConfig, LossConfig, TrainConfig):
        for name, field in model.model_fields.items():
            assert field.description or name.endswith("_backbone"), f"{model.__name__}.{name}"


def test_docs_recipes_mentions_every_key():
    doc = (ROOT / "docs" / "recipes.md").read_text()
    for table, model in [("experiment", ExperimentConfig), ("primary", DataConfig), ("model", ModelConfig),
                         ("loss", LossConfig), ("train", TrainConfig)]:
        assert f"[{table}]" in doc
        for name in model.model_fields:
            assert f"`{name}`" in doc, f"docs/recipes.md does not document {table}.{name}"
    assert "--set" in doc and "JADEKIT_DATA" in doc


def test_docs_example_recipe_is_valid():
    doc = (ROOT / "docs" / "recipes.md").read_text()
    example = doc.split("## An annotated example", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    recipe = recipe_from_dict(tomllib.loads(example))
    resolve(recipe)
    assert recipe.model.auxiliary_backbone.params == {"filters": [32, 32, 16], "pool": [True, True, True]}


def test_docs_set_example_is_valid():
    overrides = ["train.steps=500", "train.lr=3e-4", "train.compile=true", "experiment.seeds=[0,1]", "primary.resize=[32,32]",
                 "model.primary_backbone.name=cnn", "model.primary_backbone.params={filters=[32, 32], pool=[true, true]}",
                 "train.device=cpu"]
    r = load_recipe(ROOT / "recipes" / "usps_mnist.toml", overrides)
    resolve(r)
    assert r.model.primary_backbone.params == {"filters": [32, 32], "pool": [True, True]} and r.experiment.seeds == [0, 1]
