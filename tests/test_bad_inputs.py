"""Bad-input catalogue: each mistake gets one clear message, its exit code, no traceback, no file damaged."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from jadekit import io, registry
from jadekit.cli import app
from jadekit.config import load_recipe
from jadekit.runner import recipe_fingerprint

# --- tiny data in the real formats and a good recipe --------------------------------------------------


def write_data(root: Path, writers) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 200), ("test", 20)):
        writers.mnist(root, split, rng.integers(0, 256, (n, 28, 28)), np.arange(n) % 10)
    for split, n in (("train", 60), ("test", 20)):
        writers.usps(root, split, np.arange(n) % 10, rng.uniform(-1, 1, (n, 256)), decimals=4)
    return root


GOOD = """\
[experiment]
name = "bad-inputs"
methods = ["jade"]
seeds = [0]
output_dir = "{out}"

[primary]
dataset = "usps"
root = "{root}"
download = false
labels_per_class = 2

[auxiliary]
dataset = "mnist"
root = "{root}"
download = false
limit = 100

[model]
primary_backbone = {{ name = "paper-mnist" }}
auxiliary_backbone = {{ name = "paper-mnist" }}
classifier_hidden = [16]

[train]
steps = 2
batch_size = 16
eval_every = 1
device = "cpu"
"""

# --- fake plugins, found through a patched entry-point discovery ---------------------------------------

FAKE_PLUGINS = '''
import os
import torch
from pydantic import BaseModel
from jadekit.data.base import DIGITS, DatasetInfo, ImageSet, NoParams
from jadekit.backbones.cnn import PaperMNIST


class Letters:
    Params = NoParams
    def info(self, params):
        return DatasetInfo(tuple("abcdefghij"), (1, 28, 28))
    def load(self, root, split, params, download):
        raise AssertionError("never loaded: classes differ")


class _Digits:
    Params = NoParams
    def info(self, params):
        return DatasetInfo(DIGITS, (1, 28, 28))


class ReturnsDict(_Digits):
    def load(self, root, split, params, download):
        return {"images": [], "labels": []}


class RaisesOnLoad(_Digits):
    def load(self, root, split, params, download):
        raise RuntimeError("plugin bug: index out of range")


class WrongShape(_Digits):
    def load(self, root, split, params, download):
        y = torch.arange(40) % 10
        return ImageSet(torch.zeros(40, 1, 20, 20, dtype=torch.uint8), y, DIGITS, (), None)


class FloatImages(_Digits):
    def load(self, root, split, params, download):
        y = torch.arange(40) % 10
        return ImageSet(torch.zeros(40, 1, 28, 28), y, DIGITS, (), None)


class RenamedClasses(_Digits):
    def load(self, root, split, params, download):
        y = torch.arange(40) % 10
        return ImageSet(torch.zeros(40, 1, 28, 28, dtype=torch.uint8), y, DIGITS[::-1], (), None)


class ThreeChannels(_Digits):
    def load(self, root, split, params, download):
        y = torch.arange(40) % 10
        return ImageSet(torch.zeros(40, 3, 28, 28, dtype=torch.uint8), y, DIGITS, (), None)


class InfoRaises(_Digits):
    def info(self, params):
        raise ValueError("cannot describe")
    def load(self, root, split, params, download):
        raise AssertionError


class EncoderReturnsNone(PaperMNIST):
    def encoder(self, in_shape, out_dim, params):
        return None


class EncoderRaises(PaperMNIST):
    def encoder(self, in_shape, out_dim, params):
        raise ZeroDivisionError("plugin bug")


class WrongOutputSize(PaperMNIST):
    def encoder(self, in_shape, out_dim, params):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], out_dim + 3))


class _FailsOnSecondStep(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.steps, self.fail_now = inner, 0, False
    def forward(self, x):
        if self.fail_now or (os.environ.get("JK_FAKE_BUG") == "eval" and not torch.is_grad_enabled()):
            raise KeyError("plugin bug on the test set")
        if torch.is_grad_enabled():  # a training step, not the no-grad preflight batch
            self.steps += 1
            if self.steps == 2 and os.environ.get("JK_FAKE_BUG") == "oom":
                raise MemoryError("can't allocate memory")
            if self.steps == 2 and os.environ.get("JK_FAKE_BUG"):  # unset: the plugin is "fixed"
                raise IndexError("plugin bug on a rare batch")
        return self.inner(x)


class FailsLater(PaperMNIST):
    def encoder(self, in_shape, out_dim, params):
        return _FailsOnSecondStep(super().encoder(in_shape, out_dim, params))


class NoParamsBackbone:
    def encoder(self, in_shape, out_dim, params):
        return torch.nn.Identity()
    def decoder(self, latent_dim, out_shape, params):
        return torch.nn.Identity()
'''

FAKE_DATASETS = {"letters": "Letters", "returns-dict": "ReturnsDict", "raises-on-load": "RaisesOnLoad",
                 "wrong-shape": "WrongShape", "info-raises": "InfoRaises", "float-images": "FloatImages",
                 "renamed-classes": "RenamedClasses", "three-channels": "ThreeChannels"}
FAKE_BACKBONES = {"encoder-none": "EncoderReturnsNone", "encoder-raises": "EncoderRaises",
                  "wrong-output": "WrongOutputSize", "no-params": "NoParamsBackbone", "fails-later": "FailsLater"}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, digit_writers) -> Path:
    return write_data(tmp_path_factory.mktemp("data"), digit_writers)


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("plugins")
    (d / "jk_fake_plugins.py").write_text(FAKE_PLUGINS)
    (d / "jk_fake_broken.py").write_text("raise ImportError('cannot import name X from torch (plugin bug)')\n")
    (d / "jk_fake_syntax.py").write_text("import torch\n\nclass Digits(:\n    pass\n")
    return d


@pytest.fixture(autouse=True)
def fake_plugins(monkeypatch, plugin_dir):
    monkeypatch.syspath_prepend(str(plugin_dir))
    for reg, fakes in ((registry.datasets, {**FAKE_DATASETS, "broken": None, "syntax-error": "jk_fake_syntax:Digits"}),
                       (registry.backbones, {**FAKE_BACKBONES, "broken-bb": None})):
        extra = [EntryPoint(name, f"jk_fake_broken:{name}" if attr is None else attr if ":" in attr
                            else f"jk_fake_plugins:{attr}", reg.group) for name, attr in fakes.items()]
        original = reg._discover
        monkeypatch.setattr(reg, "_discover", lambda g, original=original, extra=extra: [*original(g), *extra])
        monkeypatch.setattr(reg, "_loaded", {})
    for module in ("jk_fake_plugins", "jk_fake_broken", "jk_fake_syntax"):
        sys.modules.pop(module, None)


# --- the catalogue ------------------------------------------------------------------------------------


@dataclass
class Ctx:
    """What a case may change: the recipe text, extra CLI args, files, or patched functions."""

    tmp: Path
    root: Path  # a private copy of the data
    out: Path
    recipe: Path
    monkeypatch: pytest.MonkeyPatch
    args: list[str]

    def edit(self, old: str, new: str) -> None:
        text = self.recipe.read_text()
        assert old in text, old
        self.recipe.write_text(text.replace(old, new, 1))

    def add(self, table: str, line: str) -> None:
        self.edit(f"[{table}]\n", f"[{table}]\n{line}\n")


def _truncate(path: Path, keep: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * keep)])


def _foreign_marker(c: Ctx) -> None:
    io.atomic_write_json(c.out / "jadekit-output.json", {"recipe_fingerprint": "0123456789abcdef", "experiment": "other"})


def _bad_checkpoint(c: Ctx, state: dict | None) -> None:
    ckpt = c.out / "jade" / "seed-0" / "checkpoint.pt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    if state is None:
        ckpt.write_bytes(b"PK\x03\x04 truncated")
        ckpt.with_suffix(".pt.prev").write_bytes(b"")
    else:
        io.save_checkpoint(ckpt, state)


def _raise(exc: BaseException) -> Callable:
    def f(*args, **kwargs):
        raise exc
    return f


Case = tuple[str, Callable[[Ctx], None], str, int]
CASES: list[Case] = [
    # recipe file and TOML
    ("malformed-toml", lambda c: c.edit('name = "bad-inputs"', 'name = "bad-inputs'), "malformed TOML", 2),
    ("missing-recipe", lambda c: c.args.__setitem__(1, str(c.tmp / "nope.toml")), "no such recipe file", 2),
    ("not-utf8", lambda c: c.recipe.write_bytes(b"\xff\xfe\x00bad"), "not UTF-8 text (byte 0): a TOML recipe must be UTF-8", 2),
    ("unknown-table", lambda c: c.recipe.write_text(c.recipe.read_text() + "\n[trian]\nsteps = 3\n"), "trian: unknown key", 2),
    ("unknown-key", lambda c: c.add("train", "lrr = 0.1"), "train.lrr: unknown key", 2),
    ("missing-table", lambda c: c.edit("[train]\n", "[tra]\n"), "train: Field required", 2),
    ("wrong-type-steps", lambda c: c.edit("steps = 2", 'steps = "many"'), "train.steps", 2),
    ("wrong-type-seeds", lambda c: c.edit("seeds = [0]", 'seeds = "zero"'), "experiment.seeds", 2),
    ("wrong-type-resize", lambda c: c.add("primary", "resize = 16"), "primary.resize", 2),
    ("zero-steps", lambda c: c.edit("steps = 2", "steps = 0"), "train.steps: Input should be greater than 0", 2),
    ("negative-batch", lambda c: c.edit("batch_size = 16", "batch_size = -4"), "train.batch_size", 2),
    ("zero-labels-per-class", lambda c: c.edit("labels_per_class = 2", "labels_per_class = 0"), "primary.labels_per_class", 2),
    ("negative-lr", lambda c: c.add("train", "lr = -1e-3"), "train.lr", 2),
    ("val-share-too-big", lambda c: c.add("primary", "val_share = 1.5"), "primary.val_share", 2),
    ("zero-latent", lambda c: c.add("model", "latent_dim = 0"), "model.latent_dim", 2),
    ("content-ge-latent", lambda c: c.add("model", "latent_dim = 8\ncontent_dim = 8"), "must be smaller than latent_dim", 2),
    ("unknown-method", lambda c: c.edit('methods = ["jade"]', 'methods = ["jadd"]'), "experiment.methods.0", 2),
    ("no-methods", lambda c: c.edit('methods = ["jade"]', "methods = []"), "experiment.methods", 2),
    ("duplicate-seeds", lambda c: c.edit("seeds = [0]", "seeds = [0, 0]"), "entries must be unique", 2),
    ("dropout-one", lambda c: c.add("model", "dropout = 1.0"), "model.dropout", 2),
    ("unknown-device", lambda c: c.edit('device = "cpu"', 'device = "gpu"'), "unknown device 'gpu'", 2),
    ("device-index-on-auto", lambda c: c.edit('device = "cpu"', 'device = "auto:0"'), "unknown device 'auto:0'", 2),
    # --set overrides
    ("set-no-equals", lambda c: c.args.extend(["--set", "train.lr"]), "expected key.path=value", 2),
    ("set-empty-key", lambda c: c.args.extend(["--set", "train..lr=1"]), "expected key.path=value", 2),
    ("set-not-a-table", lambda c: c.args.extend(["--set", "train.steps.x=1"]), "'steps' is not a table", 2),
    ("set-unknown-key", lambda c: c.args.extend(["--set", "train.steps_=3"]), "train.steps_: unknown key", 2),
    ("set-wrong-type", lambda c: c.args.extend(["--set", "train.batch_size=big"]), "train.batch_size", 2),
    # plugins and names
    ("unknown-dataset", lambda c: c.edit('dataset = "usps"', 'dataset = "usbs"'), "unknown dataset 'usbs'. Available:", 2),
    ("unknown-backbone", lambda c: c.edit('{ name = "paper-mnist" }', '{ name = "resnet-9000" }'),
     "unknown backbone 'resnet-9000'", 2),
    ("bad-backbone-param", lambda c: c.edit('{ name = "paper-mnist" }', '{ name = "cnn", params = { filters = "x" } }'),
     "model.primary_backbone.params", 2),
    ("dataset-param-unknown", lambda c: c.add("primary", "params = { fold = 3 }"), "primary.params.fold", 2),
    ("classes-differ", lambda c: c.edit('dataset = "mnist"', 'dataset = "letters"'), "classes differ", 2),
    ("plugin-raises-on-import", lambda c: c.edit('dataset = "mnist"', 'dataset = "broken"'), "failed to import: ImportError", 2),
    ("backbone-raises-on-import", lambda c: c.edit('{ name = "paper-mnist" }', '{ name = "broken-bb" }'),
     "backbone 'broken-bb' from (unknown distribution) ? failed to import", 2),
    ("plugin-returns-dict", lambda c: c.edit('dataset = "mnist"', 'dataset = "returns-dict"'),
     "returned dict, expected jadekit.data.base.ImageSet", 2),
    ("plugin-raises-on-load", lambda c: c.edit('dataset = "mnist"', 'dataset = "raises-on-load"'),
     "failed to load its train split: RuntimeError", 2),
    ("plugin-wrong-shape", lambda c: c.edit('dataset = "mnist"', 'dataset = "wrong-shape"'), "but declared (1, 28, 28)", 2),
    ("plugin-float-images", lambda c: c.edit('dataset = "mnist"', 'dataset = "float-images"'),
     "dataset 'float-images' returned invalid train data: images must be a uint8 tensor of shape (N, C, H, W), got "
     "float32 (40, 1, 28, 28)", 2),
    ("plugin-renamed-classes", lambda c: c.edit('dataset = "mnist"', 'dataset = "renamed-classes"'),
     "dataset 'renamed-classes' (train) returned class_names ['9', '8', '7', '6', '5', '4', '3', '2', '1', '0'], "
     "but its info() declares ['0', '1',", 2),
    ("plugin-three-channels", lambda c: c.edit('dataset = "mnist"', 'dataset = "three-channels"'),
     "info() and load() must agree on the channels", 2),
    ("plugin-info-raises", lambda c: c.edit('dataset = "mnist"', 'dataset = "info-raises"'), "failed to describe itself", 2),
    ("backbone-returns-none", lambda c: c.edit('{ name = "paper-mnist" }', '{ name = "encoder-none" }'),
     "not torch.nn.Module: primary_encoder is NoneType", 2),
    ("backbone-raises", lambda c: c.edit('{ name = "paper-mnist" }', '{ name = "encoder-raises" }'),
     "building the 'jade' model failed", 2),
    ("backbone-wrong-output", lambda c: c.edit('{ name = "paper-mnist" }', '{ name = "wrong-output" }'),
     "backbone 'wrong-output': the primary encoder returned (2, 43) for an input of (2, 1, 16, 16), expected (2, 40)", 2),
    ("backbone-breaks-contract", lambda c: c.edit('{ name = "paper-mnist" }', '{ name = "no-params" }'),
     "breaks the backbone contract", 2),
    # data
    ("labels-per-class-too-big", lambda c: c.edit("labels_per_class = 2", "labels_per_class = 500"), "labels_per_class", 2),
    ("auxiliary-misses-classes", lambda c: c.edit("limit = 100", "limit = 3"), "no samples of class(es)", 2),
    ("missing-data-file", lambda c: (c.root / "USPS" / "usps.t.bz2").unlink(), "USPS test split: data files not found:\n", 2),
    ("missing-data-root", lambda c: c.edit(f'root = "{c.root.as_posix()}"', f'root = "{(c.tmp / "void").as_posix()}"'),
     "USPS train split: data files not found:\n", 2),
    ("unwritable-data-root", lambda c: (c.edit('download = false', 'download = true'),
                                        c.edit(f'root = "{c.root.as_posix()}"', f'root = "{c.recipe.as_posix()}/cache"')),
     "USPS train split: cannot download into the data root", 2),
    ("truncated-gz", lambda c: _truncate(c.root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz"),
     "train-images-idx3-ubyte.gz is corrupt or truncated", 2),
    ("garbage-gz", lambda c: (c.root / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b" + b"x" * 50),
     "train-labels-idx1-ubyte.gz is corrupt or truncated", 2),
    ("truncated-bz2", lambda c: _truncate(c.root / "USPS" / "usps.bz2"), "usps.bz2 is corrupt or truncated", 2),
    ("garbage-mat", lambda c: (c.edit('dataset = "mnist"', 'dataset = "svhn"'),
                               (c.root / "SVHN").mkdir(), (c.root / "SVHN" / "train_32x32.mat").write_bytes(b"MATLAB 5.0" * 20)),
     "train_32x32.mat is corrupt or truncated", 2),
    ("images-too-small", lambda c: c.add("primary", "resize = [3, 3]"), "too small", 2),
    # hardware
    ("cuda-unavailable", lambda c: (c.edit('device = "cpu"', 'device = "cuda"'),
                                    c.monkeypatch.setattr(torch.cuda, "is_available", lambda: False)),
     "CUDA is not available", 2),
    ("cuda-index-too-high", lambda c: (c.edit('device = "cpu"', 'device = "cuda:2"'),
                                       c.monkeypatch.setattr(torch.cuda, "is_available", lambda: True),
                                       c.monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)),
     'this machine has 2 CUDA device(s), cuda:0 to cuda:1\nfix: set train.device = "cuda" (the first) or "cuda:N" with N below 2.', 2),
    # output directory
    ("output-from-other-recipe", _foreign_marker, "holds runs of a different recipe", 2),
    ("output-is-a-file", lambda c: c.edit(f'output_dir = "{c.out.as_posix()}"', f'output_dir = "{c.recipe.as_posix()}"'),
     "is a file, not a directory", 2),
    ("output-under-a-file", lambda c: c.edit(f'output_dir = "{c.out.as_posix()}"', f'output_dir = "{c.recipe.as_posix()}/out"'),
     "cannot be created: ", 2),
    ("output-not-jadekit", lambda c: (c.out / "jadekit-output.json").unlink(), "is not a jadekit output directory", 2),
    ("output-disk-full", lambda c: c.monkeypatch.setattr(io.os, "fsync", _raise(OSError(28, "No space left on device"))),
     "No space left on device", 2),
    ("output-read-only", lambda c: c.monkeypatch.setattr(io.tempfile, "mkstemp", _raise(PermissionError(13, "Permission denied"))),
     "Permission denied", 2),
    ("checkpoints-both-corrupt", lambda c: _bad_checkpoint(c, None), "checkpoint.pt.prev is", 2),
    ("checkpoint-of-other-model", lambda c: _bad_checkpoint(c, {"model": {"w": torch.zeros(2)}}),
     "does not fit this recipe", 2),
]


def _refresh_marker(c: Ctx, base: bytes) -> None:
    """Make the output directory belong to the edited recipe, so the case meets its own check, not the foreign-recipe one."""
    marker = c.out / "jadekit-output.json"
    if not marker.exists() or marker.read_bytes() != base:
        return  # the case itself is about the marker
    try:
        r = load_recipe(c.recipe, [a for a in c.args[c.args.index("--set") + 1:][:1]] if "--set" in c.args else [])
    except Exception:
        return  # the recipe does not even load: the output directory is never looked at
    # Plain write: some cases have already patched the functions jadekit.io writes with.
    marker.write_text(json.dumps({"recipe_fingerprint": recipe_fingerprint(r), "experiment": r.experiment.name}, indent=2) + "\n")


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def write_good_recipe(tmp_path: Path, root: Path) -> Path:
    """`tmp_path / "recipe.toml"`: the catalogue's good recipe over `root`, writing to `tmp_path / "out"`."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(GOOD.format(out=(tmp_path / "out").as_posix(), root=root.as_posix()))
    return recipe


@pytest.mark.parametrize(("name", "setup", "phrase", "code"), CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, data_root, monkeypatch, name, setup, phrase, code):
    root = tmp_path / "data"
    for f in data_root.rglob("*"):
        if f.is_file():
            (root / f.relative_to(data_root)).parent.mkdir(parents=True, exist_ok=True)
            (root / f.relative_to(data_root)).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    recipe = write_good_recipe(tmp_path, root)
    c = Ctx(tmp_path, root, out, recipe, monkeypatch, ["run", str(recipe)])
    # An output directory of this very recipe, holding earlier work that must survive every failure.
    r = load_recipe(recipe)
    io.atomic_write_json(out / "jadekit-output.json", {"recipe_fingerprint": recipe_fingerprint(r), "experiment": r.experiment.name})
    (out / "jade" / "seed-7").mkdir(parents=True)
    (out / "jade" / "seed-7" / "final.json").write_text('{"steps": 2}\n')
    (out / "notes.txt").write_text("earlier work\n")
    base_marker = (out / "jadekit-output.json").read_bytes()
    setup(c)
    _refresh_marker(c, base_marker)
    before = tree_hashes(tmp_path)

    result = CliRunner().invoke(app, c.args)

    monkeypatch.undo()
    assert isinstance(result.exception, SystemExit), f"{type(result.exception).__name__}: {result.exception}"
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert phrase in result.output, result.output
    lines = result.output.splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1, result.output
    assert any(line.startswith("fix:") for line in lines) or "problem(s)" in result.output, result.output
    after = tree_hashes(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that existed was changed
    assert after.keys() == before.keys(), after.keys() ^ before.keys()  # no stray file either


def _line_of(text: str, code: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if code in line)


@pytest.mark.parametrize("override, raising_line", [
    (("primary.dataset", '"raises-on-load"'), 'raise RuntimeError("plugin bug: index out of range")'),
    (("primary.dataset", '"info-raises"'), 'raise ValueError("cannot describe")'),
    (("model.primary_backbone", '{ name = "encoder-raises" }'), 'raise ZeroDivisionError("plugin bug")'),
])
def test_a_plugin_bug_is_named_by_its_own_file_and_line(tmp_path, data_root, plugin_dir, monkeypatch, override,
                                                        raising_line):
    """A plugin's author finds the failing line from the message alone, and JADEKIT_DEBUG=1 adds the traceback."""
    recipe = write_good_recipe(tmp_path, data_root)
    args = ["check" if "info" in override[1] else "run", str(recipe), "--set", "=".join(override)]
    at = f"(at {plugin_dir / 'jk_fake_plugins.py'}:{_line_of(FAKE_PLUGINS, raising_line)})"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and at in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    monkeypatch.setenv("JADEKIT_DEBUG", "1")
    debug = CliRunner().invoke(app, args)
    assert debug.exit_code == 2 and "Traceback" in debug.output and raising_line in debug.output, debug.output


def test_a_backbone_ignoring_its_out_dim_is_named_before_any_data_is_read(tmp_path, data_root):
    """Its output has the wrong size: `check` (which reads no data) names the backbone, what it returned and what was
    asked of it, before the model fails somewhere in jadekit's engine; the message names no file of jadekit's."""
    recipe = write_good_recipe(tmp_path, data_root)
    for command in ("check", "run"):
        result = CliRunner().invoke(app, [command, str(recipe), "--set", 'model.primary_backbone={ name = "wrong-output" }'])
        out = " ".join(result.output.split())
        assert result.exit_code == 2, result.output
        assert "the primary encoder returned (2, 43) for an input of (2, 1, 16, 16), expected (2, 40)" in out, out
        assert "`jadekit plugins check wrong-output`" in out and "(at " not in out
    assert not (tmp_path / "out").exists()


def test_raised_in_finds_a_namespace_packages_code(tmp_path, monkeypatch):
    from jadekit.errors import raised_in

    (tmp_path / "acme" / "plug").mkdir(parents=True)  # no __init__.py anywhere: a namespace package
    (tmp_path / "acme" / "plug" / "thing.py").write_text("class Thing:\n    def boom(self):\n        raise KeyError('oops')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from acme.plug.thing import Thing

    with pytest.raises(KeyError) as err:
        Thing().boom()
    assert raised_in(err.value, Thing()) == f" (at {tmp_path / 'acme' / 'plug' / 'thing.py'}:3)"


def test_debug_shows_the_traceback_of_a_plugin_that_fails_to_import(tmp_path, data_root, monkeypatch):
    recipe = write_good_recipe(tmp_path, data_root)
    monkeypatch.setenv("JADEKIT_DEBUG", "1")
    result = CliRunner().invoke(app, ["check", str(recipe), "--set", 'primary.dataset="broken"'])
    assert result.exit_code == 2 and 'jk_fake_broken.py", line 1' in result.output, result.output


def test_catalogue_is_big_enough():
    assert len(CASES) >= 40


def test_every_missing_split_is_named_in_one_message(write_tiny_recipe, tmp_path):
    (tmp_path / "empty").mkdir()
    recipe = write_tiny_recipe(tmp_path / "tiny.toml", tmp_path / "runs", tmp_path / "empty")
    result = CliRunner().invoke(app, ["run", str(recipe)])
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "4 data problems" in text
    assert all(f"{d} {s} split: data files not found" in text for d in ("USPS", "MNIST") for s in ("train", "test"))
    assert "fix: put the missing files at the paths listed" in text and not (tmp_path / "runs").exists()


def test_check_builds_the_models_so_params_that_cannot_build_fail_there(tiny_recipe):
    deep = '{name = "cnn", params = {filters = [8, 8, 8, 8, 8], pool = [true, true, true, true, true]}}'
    result = CliRunner().invoke(app, ["check", str(tiny_recipe), "--set", f"model.primary_backbone={deep}"])
    assert result.exit_code == 2 and "too small for 5 2x poolings" in result.output, result.output


def test_a_problem_both_splits_share_is_reported_once():
    """A dataset that splits one file list (imagefolder's test_share) fails alike for train and test: said once."""
    from jadekit.errors import DataError
    from jadekit.runner import load_every_split

    class Cache:
        def split(self, domain, split):
            raise DataError(f"{domain}: group_pattern does not match scan7.png" if domain == "primary" else
                            f"auxiliary {split} split: damaged file")

    with pytest.raises(DataError) as err:
        load_every_split(Cache())
    message = err.value.message
    assert message.startswith("3 data problems:") and message.count("scan7.png") == 1
    assert "auxiliary train split" in message and "auxiliary test split" in message


@pytest.mark.parametrize("plugin, file, line", [("broken", "jk_fake_broken.py", 1), ("syntax-error", "jk_fake_syntax.py", 3)])
def test_a_plugin_that_fails_to_import_is_named_by_its_file_and_line(tmp_path, data_root, plugin, file, line):
    recipe = write_good_recipe(tmp_path, data_root)
    result = CliRunner().invoke(app, ["check", str(recipe), "--set", f'primary.dataset="{plugin}"'])
    out = " ".join(result.output.split())
    assert result.exit_code == 2 and "failed to import" in out and f"{file}:{line})" in out, result.output
    assert "Traceback" not in result.output


def test_a_plugin_bug_mid_training_names_its_line_and_keeps_the_checkpoint(tmp_path, data_root, plugin_dir,
                                                                            monkeypatch):
    """Past the preflight batch (a rare batch at step 2): a plugin error naming the file and line, the step and the
    kept checkpoint, exit 2 (it used to be "unexpected IndexError" with no location, exit 1); once the plugin is fixed,
    the same command continues from that checkpoint, as the message says."""
    recipe = write_good_recipe(tmp_path, data_root)
    args = ["run", str(recipe), "--set", 'model.primary_backbone={ name = "fails-later" }']
    monkeypatch.setenv("JK_FAKE_BUG", "1")
    result = CliRunner().invoke(app, args)
    out = " ".join(result.output.split())
    at = f"(at {plugin_dir / 'jk_fake_plugins.py'}:{_line_of(FAKE_PLUGINS, 'raise IndexError')})"
    assert result.exit_code == 2, result.output
    assert "jade seed 0: training stopped after step 1: backbone 'fails-later' raised IndexError: plugin bug" in out, out
    assert at in out and "Traceback" not in result.output
    ckpt = tmp_path / "out" / "jade" / "seed-0" / "checkpoint.pt"
    assert f"the last good checkpoint ({ckpt}, step 1) is kept" in out
    assert io.load_checkpoint(ckpt)[0]["loop"]["step"] == 1
    monkeypatch.delenv("JK_FAKE_BUG")
    fixed = CliRunner().invoke(app, args)
    assert fixed.exit_code == 0 and "jade seed 0: resuming at step 1" in fixed.output, fixed.output
    metrics = [json.loads(line) for line in (ckpt.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics if r["kind"] == "train"] == [1, 2]
    assert json.loads((ckpt.parent / "final.json").read_text())["steps"] == 2
    assert "fix: fix the plugin, then run the same command again: it continues from that checkpoint." in result.output


def test_a_plugin_bug_on_the_test_sets_names_its_line_and_a_rerun_only_evaluates(tmp_path, data_root, plugin_dir,
                                                                                 monkeypatch):
    """Training finished, the backbone's code fails on the test sets: the same plugin error, exit 2, and the final
    checkpoint kept, from which the rerun only evaluates."""
    from jadekit import runner

    def restore_then_break(model, state):  # the step between training and the test sets
        restore_best(model, state)
        model.primary_encoder.fail_now = True

    restore_best = runner.restore_best
    monkeypatch.setattr(runner, "restore_best", restore_then_break)
    recipe = write_good_recipe(tmp_path, data_root)
    args = ["run", str(recipe), "--set", 'model.primary_backbone={ name = "fails-later" }']
    result = CliRunner().invoke(app, args)
    out = " ".join(result.output.split())
    at = f"(at {plugin_dir / 'jk_fake_plugins.py'}:{_line_of(FAKE_PLUGINS, 'raise KeyError')})"
    assert result.exit_code == 2, result.output
    assert "jade seed 0: evaluating on the test sets failed: backbone 'fails-later' raised " in out, out
    assert "KeyError: 'plugin bug on the test set' " + at in out, out
    monkeypatch.setattr(runner, "restore_best", restore_best)
    fixed = CliRunner().invoke(app, args)
    assert fixed.exit_code == 0 and "jade seed 0: resuming at step 2" in fixed.output, fixed.output


def test_running_out_of_memory_mid_training_says_so_and_keeps_the_checkpoint(tmp_path, data_root, monkeypatch):
    """Not "unexpected ... a bug in jadekit or a plugin", nor the plugin's bug though its code asked for the memory."""
    recipe = write_good_recipe(tmp_path, data_root)
    monkeypatch.setenv("JK_FAKE_BUG", "oom")
    result = CliRunner().invoke(app, ["run", str(recipe), "--set", 'model.primary_backbone={ name = "fails-later" }'])
    out = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "jade seed 0: training stopped after step 1: out of memory: can't allocate memory; " in out, out
    assert "the last good checkpoint" in out and "fix: free memory" in out and "backbone" not in out, out


@pytest.mark.parametrize("command, doing", [("eval", "scoring usps (test) with"), ("report", "building the report of")])
def test_a_plugin_bug_in_eval_or_report_names_its_line(tmp_path, data_root, plugin_dir, monkeypatch, command, doing):
    recipe = write_good_recipe(tmp_path, data_root)
    assert CliRunner().invoke(app, ["run", str(recipe), "--set", 'model.primary_backbone={ name = "fails-later" }']
                              ).exit_code == 0
    monkeypatch.setenv("JK_FAKE_BUG", "eval")
    run_dir = tmp_path / "out" / "jade" / "seed-0"
    result = CliRunner().invoke(app, [command, str(run_dir)])
    out = " ".join(result.output.split())
    at = f"(at {plugin_dir / 'jk_fake_plugins.py'}:{_line_of(FAKE_PLUGINS, 'raise KeyError')})"
    assert result.exit_code == 2 and f"{doing} {run_dir}: backbone 'fails-later' raised KeyError" in out, result.output
    assert at in out and "Traceback" not in result.output


def test_an_exception_in_a_built_in_backbones_code_is_not_blamed_on_a_plugin(tmp_path, monkeypatch):
    """A built-in backbone is jadekit's code: its failure mid-training stays "unexpected" (a bug to report)."""
    import importlib.util
    from types import SimpleNamespace

    from jadekit.trainer import plugin_code_failures

    (tmp_path / "builtin_bb.py").write_text("class Backbone:\n    def forward(self):\n        raise IndexError('ours')\n")
    spec = importlib.util.spec_from_file_location("jadekit.backbones.builtin_bb", tmp_path / "builtin_bb.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "jadekit.backbones.builtin_bb", module)
    spec.loader.exec_module(module)
    domain = SimpleNamespace(backbone=module.Backbone(), backbone_name="built-in")
    resolved = SimpleNamespace(primary=domain, auxiliary=domain)
    with pytest.raises(IndexError, match="ours"):
        with plugin_code_failures(resolved, lambda: "run", lambda: "kept", lambda: "rerun"):
            module.Backbone().forward()


def test_raised_in_never_fails_while_reporting(tmp_path):
    from jadekit.errors import raised_in

    try:
        raise ValueError("x")
    except ValueError as e:
        error = e
    for owner in ("no_such_package_anywhere", "", ".relative", object(), None):
        assert raised_in(error, owner) == ""
    syntax = SyntaxError("bad", (str(tmp_path / "plug.py"), None, None, ""))
    assert raised_in(syntax, str(tmp_path / "plug.py")) == ""  # no such module: no location, no crash
