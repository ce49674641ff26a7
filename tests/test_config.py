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
    with pytest.raises(ValueError, match="frozen"):
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


@pytest.mark.parametrize(("item", "key", "message"), [
    ("train.steps=true", "train.steps", "Input should be a valid integer (got true); write a whole number"),
    ('train.steps="30"', "train.steps", 'Input should be a valid integer (got "30")'),
    ("train.batch_size=8.0", "train.batch_size", "Input should be a valid integer (got 8.0)"),
    ("train.batch_size=8.5", "train.batch_size", "Input should be a valid integer (got 8.5)"),
    ('train.lr="1e-3"', "train.lr", 'Input should be a valid number (got "1e-3"); write a number without quotes'),
    ("loss.kl_match=true", "loss.kl_match", "Input should be a valid number (got true)"),
    ("experiment.seeds=[true]", "experiment.seeds.0", "Input should be a valid integer (got true)"),
    ('primary.resize=["28", 28]', "primary.resize.0", 'Input should be a valid integer (got "28")'),
    ("train.compile=1", "train.compile", "Input should be a valid boolean (got 1)"),
    ("train.device=1", "train.device", "Input should be a valid string (got 1)"),
])
def test_wrong_types_are_not_converted(item, key, message):
    with pytest.raises(RecipeError) as e:
        load_recipe(SMOKE, [item])
    [line] = problems(e)  # one problem, on one line, naming the key
    assert line.startswith(f"{key}: ") and message in line and "\n" not in line, line


def test_ints_are_floats_and_toml_strings_are_paths():
    r = load_recipe(SMOKE, ["train.lr=1", "loss.kl_match=2", "train.augment_rotate=10", "primary.val_share=0",
                            "primary.root=data", 'experiment.output_dir="out"', "auxiliary.resize=[28, 28]"])
    assert (r.train.lr, r.loss.kl_match, r.train.augment_rotate, r.primary.val_share) == (1.0, 2.0, 10.0, 0.0)
    assert type(r.train.lr) is float and r.primary.root == Path("data") and r.experiment.output_dir == Path("out")
    assert r.auxiliary.resize == (28, 28)
    data = read_toml(SMOKE)
    data["train"]["lr"] = 1
    assert recipe_from_dict(data).train.lr == 1.0


def test_wrong_type_in_the_file_is_reported_by_check(tmp_path):
    path = write_recipe(tmp_path, train={"steps": True, "lr": "1e-3", "batch_size": 8.0})
    res = runner.invoke(app(), ["check", str(path)])
    assert res.exit_code == 2 and "3 problem(s)" in res.stderr, res.output
    for line in ("train.steps: Input should be a valid integer (got true)", 'train.lr: Input should be a valid number (got "1e-3")',
                 "train.batch_size: Input should be a valid integer (got 8.0)"):
        assert line in res.stderr, res.stderr


@pytest.mark.parametrize(("item", "fix"), [
    ("experiment.methods=[jade,single]", """--set 'experiment.methods=["jade", "single"]'"""),
    ("experiment.seeds=[0, x]", """--set 'experiment.seeds=[0, "x"]'"""),
    ("experiment.methods=[jade,single", 'quote the strings inside, e.g. ["jade", "single"]'),
    ("model.primary_backbone={name=cnn}", 'quote the strings inside, e.g. {name = "cnn"}'),
])
def test_set_list_or_table_that_is_not_toml(item, fix):
    key, _, raw = item.partition("=")
    with pytest.raises(RecipeError) as e:
        parse_override(item)
    [line] = problems(e)
    assert line.startswith(f"{key}: --set value {raw} is not valid TOML; ") and fix in line, line


def test_a_quoted_string_that_is_not_toml_is_an_error_not_a_string_with_quotes():
    """A regex in double quotes (`\\d` is no TOML escape) used to be kept verbatim, quotes and all, and then matched
    no file; it is an error with the single-quoted form. Good strings and bare words are unchanged."""
    with pytest.raises(RecipeError) as e:
        parse_override('primary.params.group_pattern="^(patient\\d+)_"')
    [line] = problems(e)
    assert line.startswith('primary.params.group_pattern: --set value "^(patient\\d+)_" is not a valid TOML string; ')
    assert "backslash" in line and """--set "primary.params.group_pattern='^(patient\\d+)_'\"""" in line
    assert parse_override("group_pattern='^(patient\\d+)_'") == (["group_pattern"], "^(patient\\d+)_")
    with pytest.raises(RecipeError) as e:  # `!` would be expanded inside the shell's double quotes: the other form
        parse_override('g="(?!ctl)\\d+"')
    fix = problems(e)[0].split(" shell: --set ")[1]
    assert fix == """'g="(?!ctl)\\\\d+"'""" and parse_override(fix[1:-1]) == (["g"], "(?!ctl)\\d+")
    assert parse_override("name=plain-word") == (["name"], "plain-word")
    with pytest.raises(RecipeError, match=r"classes: --param value \[a,b\] is not valid TOML.*--param 'classes="):
        parse_override("classes=[a,b]", "--param")
    with pytest.raises(RecipeError, match=r"--param 'path': expected key.path=value, e.g. path=scans"):
        parse_override("path", "--param")


def test_check_says_an_unquoted_set_list_is_not_toml():
    res = runner.invoke(app(), ["check", str(SMOKE), "--set", "experiment.methods=[jade,single]"])
    assert res.exit_code == 2
    assert "experiment.methods: --set value [jade,single] is not valid TOML" in res.stderr, res.stderr
    assert """--set 'experiment.methods=["jade", "single"]'""" in res.stderr and "valid list" not in res.stderr


def test_problems_name_the_overrides(tmp_path):
    with pytest.raises(RecipeError, match=re.escape(f"1 problem(s) in {SMOKE} with --set overrides:")):
        load_recipe(SMOKE, ["train.steps=0"])
    path = write_recipe(tmp_path, train={"steps": 0})
    with pytest.raises(RecipeError, match=re.escape(f"1 problem(s) in {path}:")):
        load_recipe(path)


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


@pytest.mark.parametrize("item", ["train.lr=inf", "train.lr=nan", "loss.kl_prior=inf", "train.weight_decay=inf",
                                  "primary.val_share=nan", "model.dropout=nan", "train.augment_scale=nan"])
def test_numbers_must_be_finite(item):
    """inf or nan would pass `check` (or fail with a misleading bound) and only show up as a diverged run."""
    with pytest.raises(RecipeError) as e:
        load_recipe(SMOKE, [item])
    assert problems(e) == [f"{item.split('=')[0]}: Input should be a finite number"]


def test_seeds_and_output_dir_that_cannot_run_are_recipe_errors():
    assert load_recipe(SMOKE, ["experiment.seeds=[18446744073709551615]"]).experiment.seeds == [2**64 - 1]  # torch's limit
    with pytest.raises(RecipeError, match="experiment.seeds.0: Input should be less than 18446744073709551616"):
        load_recipe(SMOKE, ["experiment.seeds=[18446744073709551616]"])
    for empty in ('""', '"  "'):
        with pytest.raises(RecipeError, match=r'experiment.output_dir: empty: name a folder \(use "\." for'):
            load_recipe(SMOKE, [f"experiment.output_dir={empty}"])


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
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + SMOKE.read_bytes())  # as some Windows editors save UTF-8
    assert read_toml(bom) == read_toml(SMOKE)
    utf16 = tmp_path / "utf16.toml"
    utf16.write_text(SMOKE.read_text(), encoding="utf-16")
    with pytest.raises(RecipeError, match="not UTF-8 text") as e:
        read_toml(utf16)
    assert e.value.hint == "save the recipe as UTF-8 in your editor (e.g. not UTF-16)."


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


@pytest.mark.parametrize("command", ["check", "describe"])
def test_a_model_too_large_to_allocate_is_named(tmp_path, command):
    path = write_recipe(tmp_path, model={"classifier_hidden": [10**12]})  # a 4e13-byte first layer: refused at once
    res = runner.invoke(app(), [command, str(path)])
    said = " ".join(res.stderr.split())
    assert res.exit_code == 2 and "model is too large for this machine's memory" in said, res.output
    assert "fix: lower model.classifier_hidden or model.latent_dim" in said and "Traceback" not in res.output


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
    assert "model.primary_backbone.params.x: unknown parameter of 'paper-mnist' (it takes no parameters)" in res.stderr
    assert "model.auxiliary_backbone.params.filters: Field required" in res.stderr


def test_builtin_backbone_params_are_never_converted(tmp_path):
    """As recipe values: 8.0, "8" or true where an int is expected is an error that says what to write."""
    res = runner.invoke(app(), ["check", str(SMOKE), "--set", "model.primary_backbone.name=cnn",
                                "--set", 'model.primary_backbone.params={filters=["8", 8.0], pool=[1, true]}',
                                "--set", "model.auxiliary_backbone.name=timm",
                                "--set", "model.auxiliary_backbone.params={decoder_channels=[0]}"])
    assert res.exit_code == 2
    for line in ('params.filters.0: Input should be a valid integer (got "8"); write a whole number without quotes',
                 "params.filters.1: Input should be a valid integer (got 8.0)",
                 "params.pool.0: Input should be a valid boolean (got 1); write true or false without quotes",
                 "model.auxiliary_backbone.params.decoder_channels.0: Input should be greater than 0"):
        assert line in res.stderr, res.stderr


def test_a_path_typed_as_a_number_says_to_quote_it(tmp_path):
    res = runner.invoke(app(), ["check", str(SMOKE), "--set", "experiment.output_dir=2024"])
    assert res.exit_code == 2
    assert ('experiment.output_dir: Input should be a path (got 2024); write the path as a quoted string, e.g. "runs/2024"'
            in res.stderr), res.stderr


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
    """The `jadekit run ... --set ...` example in docs/recipes.md, as a shell would split it."""
    import shlex

    doc = (ROOT / "docs" / "recipes.md").read_text()
    command = re.search(r"^jadekit run recipes/usps_mnist\.toml --set .*?(?=\n```)", doc, flags=re.M | re.S).group(0)
    words = shlex.split(command.replace("\\\n", " "))
    overrides = [value for option, value in zip(words, words[1:], strict=False) if option == "--set"]
    assert len(overrides) == words.count("--set") == 8, words
    r = load_recipe(ROOT / "recipes" / "usps_mnist.toml", overrides)
    resolve(r)
    assert r.model.primary_backbone.params == {"filters": [32, 32], "pool": [True, True]} and r.experiment.seeds == [0, 1]
