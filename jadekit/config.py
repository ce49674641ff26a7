"""Recipe → config: strict, frozen pydantic models of a TOML recipe, with `--set` overrides."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from jadekit.errors import RecipeError

Method = Literal["single", "paired", "jade"]
METHODS: tuple[Method, ...] = ("single", "paired", "jade")


class Strict(BaseModel):
    """Base of every recipe table: unknown keys are errors, values are immutable, types are not converted.

    Strict: `true`, `"30"` or `8.0` for an int and `"1e-3"` for a float are errors; an int is still a valid float,
    `inf` and `nan` are not. Fields read from TOML strings or lists (paths, `resize`) opt out with `Field(strict=False)`;
    their items stay strict.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class ExperimentConfig(Strict):
    """What to run and where to write it."""

    name: str = Field(min_length=1, description="Experiment name, used in reports.")
    methods: list[Method] = Field(min_length=1, description="Methods to run: single, paired, jade.")
    seeds: list[Annotated[int, Field(ge=0, lt=2**64)]] = Field(min_length=1, description="One run per method and seed.")
    output_dir: Path = Field(Path("runs"), strict=False, description="Run directories go under this folder.")

    @field_validator("output_dir", mode="before")
    @classmethod
    def _named(cls, v: object) -> object:
        if isinstance(v, str) and not v.strip():  # Path("") would silently be the current directory
            raise ValueError('empty: name a folder (use "." for the current directory)')
        return v

    @field_validator("methods", "seeds")
    @classmethod
    def _unique(cls, v: list) -> list:
        if len(set(v)) != len(v):
            raise ValueError("entries must be unique")
        return v


class DataConfig(Strict):
    """One dataset of the pair (the `[primary]` or `[auxiliary]` table)."""

    dataset: str = Field(min_length=1, description="Registered dataset name (see `jadekit plugins list`).")
    root: Path | None = Field(None, strict=False, description="Data root; else $JADEKIT_DATA, else ~/.cache/jadekit.")
    download: bool = Field(True, description="Download missing files with torchvision's downloader.")
    labels_per_class: PositiveInt | None = Field(
        None, description="Labelled samples drawn per class (stratified, seeded); all when unset."
    )
    limit: PositiveInt | None = Field(None, description="Cap on labelled samples drawn (stratified); all when unset.")
    val_share: float = Field(0.0, ge=0.0, lt=1.0, description="Share of the labelled subset kept for validation.")
    resize: tuple[PositiveInt, PositiveInt] | None = Field(None, strict=False, description="Resize images to [H, W] on load.")
    params: dict[str, Any] = Field(default_factory=dict, description="Adapter-specific parameters.")

    def data_root(self) -> Path:
        """The data root this table resolves to."""
        if self.root is not None:
            return self.root.expanduser()
        env = os.environ.get("JADEKIT_DATA")
        return Path(env).expanduser() if env else Path("~/.cache/jadekit").expanduser()


class BackboneConfig(Strict):
    """An encoder/decoder backbone by registered name, with its parameters."""

    name: str = Field(min_length=1, description="Registered backbone name (see `jadekit plugins list`).")
    params: dict[str, Any] = Field(default_factory=dict, description="Backbone-specific parameters.")


class ModelConfig(Strict):
    """Backbones, latent sizes and the shared classifier."""

    primary_backbone: BackboneConfig
    auxiliary_backbone: BackboneConfig
    latent_dim: PositiveInt = Field(20, description="JADE latent size (content + style).")
    content_dim: PositiveInt = Field(10, description="Content dims fed to the classifier (the bottleneck size).")
    classifier_hidden: list[PositiveInt] = Field([500, 500, 500], min_length=1, description="MLP hidden sizes.")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="Dropout after each hidden layer of the MLP.")
    classifier_input: Literal["sample", "mean", "auxiliary-mean"] = Field(
        "sample",
        description="jade: train the classifier on a posterior sample of the content, on its mean, "
        "or on the mean for the auxiliary dataset and a sample for the primary.",
    )

    @model_validator(mode="after")
    def _content_fits(self) -> ModelConfig:
        if self.content_dim >= self.latent_dim:
            raise ValueError(
                f"content_dim ({self.content_dim}) must be smaller than latent_dim ({self.latent_dim}): "
                "the remaining dims hold style"
            )
        return self


class LossConfig(Strict):
    """Weights of each loss term and the estimator used to match content posteriors."""

    reconstruction: NonNegativeFloat = Field(1.0, description="Weight of the reconstruction NLL (jade).")
    classification: NonNegativeFloat = Field(
        100.0,
        description="Weight of the cross-entropy (all methods). Large because the reconstruction NLL is summed over "
        "pixels (hundreds of nats); at 1, as in the paper's objective, jade's classifier barely learns (docs/results.md).",
    )
    kl_prior: NonNegativeFloat = Field(1.0, description="Weight of KL(q(z|x) || N(0, I)) (jade).")
    kl_match: NonNegativeFloat = Field(1.0, description="Weight of the content-matching KL (jade).")
    auxiliary: NonNegativeFloat = Field(1.0, description="Weight of every auxiliary-dataset term (paired, jade).")
    match: Literal["pairwise", "class_moments"] = Field(
        "pairwise", description="pairwise: mean KL over same-class pairs; class_moments: KL of per-class Gaussians."
    )
    match_gradient: Literal["both", "primary"] = Field(
        "both", description="Encoders the matching KL trains. both: the paper's objective; primary: the auxiliary "
        "posterior is a fixed target (no gradient), so matching moves only the primary content toward the auxiliary's.",
    )
    likelihood: Literal["bernoulli", "gaussian"] = Field("bernoulli", description="Decoder likelihood.")
    kl_warmup_steps: NonNegativeInt = Field(0, description="Ramp both KL weights linearly from 0 over these steps.")


class TrainConfig(Strict):
    """Optimisation, evaluation cadence and hardware."""

    steps: PositiveInt = Field(description="Optimizer steps per run.")
    batch_size: PositiveInt = Field(64, description="Primary samples per step.")
    auxiliary_batch_size: PositiveInt | None = Field(
        None, description="Auxiliary samples per step; default batch_size."
    )
    primary_sampling: Literal["shuffled", "class_balanced"] = Field(
        "shuffled", description="shuffled: the primary pool is read epoch by epoch; class_balanced: each sample's class "
        "is drawn uniformly from the classes present, then an image at random within it (for imbalanced data).",
    )
    auxiliary_sampling: Literal["class_matched", "shuffled"] = Field(
        "class_matched", description="class_matched: each auxiliary batch holds the primary batch's classes; shuffled: "
        "the auxiliary pool is read epoch by epoch, classes as they come.",
    )
    lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate.")
    weight_decay: NonNegativeFloat = Field(0.0, description="AdamW weight decay.")
    lr_schedule: Literal["constant", "cosine"] = Field("constant", description="Learning-rate schedule.")
    augment_shift: NonNegativeInt = Field(
        0, description="Shift training images (both datasets) by up to N pixels at random; 0 = no augmentation."
    )
    augment_rotate: float = Field(
        0.0, ge=0.0, le=180.0,
        description="Rotate training images by up to N degrees either way (datasets: augment_rotate_scale_on); 0 = off.",
    )
    augment_scale: float = Field(
        0.0, ge=0.0, lt=1.0, description="Scale training images by a factor in 1 ± N (datasets: augment_rotate_scale_on); 0 = off."
    )
    augment_rotate_scale_on: Literal["both", "primary"] = Field(
        "both", description="Datasets that augment_rotate and augment_scale apply to; the shift always applies to both."
    )
    eval_every: PositiveInt = Field(250, description="Validate (and keep the best state) every N steps.")
    select: Literal["val_accuracy", "val_balanced_accuracy", "val_nll", "last"] = Field(
        "val_accuracy", description="Weights kept and reported: best validation accuracy (ties: NLL), best validation "
        "balanced accuracy (mean recall over classes; ties: NLL), best validation NLL (ties: accuracy), or the last "
        "step's (validation still recorded).",
    )
    checkpoint_every: PositiveInt | None = Field(None, description="Checkpoint every N steps; default eval_every.")
    device: str = Field("auto", description="auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps.")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast for the forward pass.")
    compile: bool = Field(False, description="torch.compile the step (GPU runs).")
    threads: PositiveInt | None = Field(None, description="torch CPU threads; default torch's choice.")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not is_device_name(v):
            raise ValueError(f"unknown device '{v}'; {DEVICE_NAMES}")
        return v


DEVICE_NAMES = "use auto, cpu, cuda, cuda:N or mps"


def is_device_name(name: str) -> bool:
    """auto, cpu, cuda, cuda:N or mps: the device names of `train.device` and `--device`."""
    base, colon, index = name.partition(":")
    return base in ("auto", "cpu", "cuda", "mps") and (not colon or (base == "cuda" and index.isascii() and index.isdigit()))


class Recipe(Strict):
    """A whole recipe: one TOML file."""

    experiment: ExperimentConfig
    primary: DataConfig
    auxiliary: DataConfig
    model: ModelConfig
    loss: LossConfig = LossConfig()
    train: TrainConfig


# What to write instead, for the type errors of the strict models (values are never converted).
_TYPE_FIXES = {
    "int_type": "write a whole number without quotes",
    "float_type": "write a number without quotes, e.g. 3e-4",
    "bool_type": "write true or false without quotes",
    "string_type": 'write a quoted string, e.g. "cpu"',
    "path_type": 'write the path as a quoted string, e.g. "runs/2024"',
    "list_type": 'write a list, e.g. [0, 1] or ["jade", "single"]',
    "model_type": "write a table: [table] in the file, {key = value} in --set",
    "dict_type": "write a table: [table] in the file, {key = value} in --set",
}


def _toml_repr(value: Any) -> str:
    """A short TOML-like rendering of an offending value: true, "30", 8.0, a list, a table."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 40 else value[:37] + "...")
    if isinstance(value, int | float):
        return repr(value)
    return "a table" if isinstance(value, dict) else "a list" if isinstance(value, list | tuple) else type(value).__name__


def format_validation_error(err: ValidationError, prefix: str = "", unknown: str | None = None) -> list[str]:
    """Render pydantic errors as `key.path: message` lines (type errors say what was given and what to write).

    prefix: a recipe table the keys sit in (`model.primary_backbone.params`), or a CLI option that passed them
    (`--param`: lines then read `--param key: ...`, and an unknown key is an unknown parameter of a plugin).
    unknown: what to say of an unknown key instead (a plugin's params table: the parameters it has).
    """
    option = prefix.startswith("--")
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        loc = f"{prefix} {key or '(all)'}" if option else ".".join(p for p in (prefix, key) if p)
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = unknown or ("unknown parameter" if option else "unknown key (check its spelling; see docs/recipes.md)")
        elif e["type"] == "value_error":  # our validators' own messages: pydantic's "Value error, " adds nothing
            msg = msg.removeprefix("Value error, ")
        elif e["type"] in _TYPE_FIXES:
            msg = "Input should be a path" if e["type"] == "path_type" else msg  # not pydantic's "<class 'pathlib.Path'>"
            msg = f"{msg} (got {_toml_repr(e['input'])}); {_TYPE_FIXES[e['type']]}"
        lines.append(f"{loc or '(recipe)'}: {msg}")
    return lines


def parameters_hint(model: type[BaseModel], option: str) -> str:
    """The fix for rejected plugin parameters passed with `option` (`--param`, `--set`): the ones that exist."""
    names = known_parameters(model)
    return f"{names}: pass them as {option} NAME=VALUE." if model.model_fields else f"{names}: leave {option} out."


def known_parameters(model: type[BaseModel]) -> str:
    """`its parameters are a, b` (or `it takes no parameters`): what a plugin's params model accepts."""
    names = ", ".join(model.model_fields)
    return f"its parameters are {names}" if names else "it takes no parameters"


def _is_toml(raw: str) -> bool:
    try:
        tomllib.loads(f"v = {raw}")
    except tomllib.TOMLDecodeError:
        return False
    return True


def _not_toml(key: str, raw: str, option: str = "--set") -> str:
    """The problem with a `--set` list, table or quoted string that is not TOML, with a form that parses where one
    is clear (bare words quoted; a double-quoted string whose backslashes are not TOML escapes in single quotes)."""
    if raw.startswith(('"', "'")):
        inner = raw[1:-1] if len(raw) > 1 and raw[-1] == raw[0] else raw[1:]
        why = "in double quotes a backslash starts an escape (as in a regex's \\d); " if raw[0] == '"' and "\\" in raw else ""
        if not any(c in inner for c in "'\"$`!") and "\\\\" not in inner:  # safe inside the shell's double quotes
            fix = (f"{why}write a literal string in single quotes, and the whole argument in double quotes in your "
                   f"shell: {option} \"{key}='{inner}'\"")
        elif "'" not in inner:  # a TOML basic string with its backslashes doubled, in the shell's single quotes
            escaped = inner.replace("\\", "\\\\").replace('"', '\\"')
            fix = f"{why}double each backslash, and quote the whole argument in your shell: {option} '{key}=\"{escaped}\"'"
        else:
            fix = f"{why}see https://toml.io/en/v1.0.0#string for TOML's literal and basic strings"
        return f"{key}: {option} value {raw} is not a valid TOML string; {fix}"
    example = '["jade", "single"]' if raw.startswith("[") else '{name = "cnn"}'
    fix = f"quote the strings inside, e.g. {example}, and the whole argument in your shell"
    if raw.startswith("[") and raw.endswith("]"):
        items = [i.strip() for i in raw[1:-1].split(",") if i.strip()]
        bare = [i for i in items if not _is_toml(i)]  # words to quote; a nested list or a stray quote is beyond this
        quoted = json.dumps([i if i in bare else tomllib.loads(f"v = {i}")["v"] for i in items], default=str)
        if not any(c in i for i in bare for c in "[]{}\"'") and _is_toml(quoted) and "'" not in quoted:
            fix = f"quote its strings, and the whole argument in your shell: {option} '{key}={quoted}'"
    return f"{key}: {option} value {raw} is not valid TOML; {fix}"


def parse_override(item: str, option: str = "--set") -> tuple[list[str], Any]:
    """Split `a.b.c=value` into a key path and a TOML-typed value (bare words stay strings).

    option: the CLI option the item came from (`--set`, `--param`), as errors name it.
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        example = "train.lr=3e-4" if option == "--set" else "path=scans"
        raise RecipeError([f"{option} {item!r}: expected key.path=value, e.g. {example}"])
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        if raw.startswith(("[", "{", '"', "'")):  # meant as a list, table or string: a bare string would hide the problem
            raise RecipeError([_not_toml(key, raw, option)]) from None
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str], option: str = "--set") -> dict[str, Any]:
    """Return a copy of a raw recipe dict with `key=value` overrides (from `option`) applied."""
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        path, value = parse_override(item, option)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError([f"{option} {item!r}: '{part}' is not a table"])
            node = child
        node[path[-1]] = value
    return out


def read_toml(path: Path) -> dict[str, Any]:
    """Read a TOML file, turning I/O and syntax errors into a RecipeError."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark, as some Windows editors write, is fine
    except FileNotFoundError:
        raise RecipeError([f"{path}: no such recipe file"]) from None
    except UnicodeDecodeError as e:
        raise RecipeError([f"{path}: not UTF-8 text (byte {e.start}): a TOML recipe must be UTF-8"],
                          hint="save the recipe as UTF-8 in your editor (e.g. not UTF-16).") from None
    except OSError as e:
        raise RecipeError([f"{path}: cannot read recipe ({e})"]) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise RecipeError([f"{path}: malformed TOML: {e}"]) from None


def recipe_from_dict(data: dict[str, Any], source: str | None = None) -> Recipe:
    """Validate a raw recipe dict, reporting every problem at once."""
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e), source=source) from None


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def changed_keys(old: dict, new: dict) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every key two nested recipe dicts differ in, sorted by key."""
    a, b = _flat(old), _flat(new)
    return [(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def recipe_source(path: Path, overrides: list[str] | None = None) -> str:
    """How problems name a recipe: `recipes/x.toml`, or `recipes/x.toml with --set overrides` when some were given."""
    return f"{path} with --set overrides" if overrides else str(path)


def load_recipe(path: Path, overrides: list[str] | None = None) -> Recipe:
    """Load, override and validate a recipe file (structure only; plugins are checked by `check`)."""
    data = apply_overrides(read_toml(path), overrides or [])
    return recipe_from_dict(data, source=recipe_source(path, overrides))


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """A JSON/TOML-safe dict of a recipe (paths as strings, unset values dropped)."""
    return recipe.model_dump(mode="json", exclude_none=True)
