"""Plugin discovery, its errors, the conformance checks (jadekit.testing) and `jadekit plugins`."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
import types
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from typer.testing import CliRunner

from jadekit import registry
from jadekit.cli import app
from jadekit.data.base import DatasetInfo, ImageSet, NoParams
from jadekit.errors import DataError, PluginError
from jadekit.registry import DISABLE_ENV, Registry, check_backbone_object, check_dataset_object
from jadekit.scaffold import create
from jadekit.testing import ConformanceError, assert_backbone, assert_dataset, check_backbone, check_dataset

runner = CliRunner()
MOD = "fake_jadekit_plugin"
DOC = (Path(__file__).resolve().parents[1] / "docs" / "plugins.md").read_text(encoding="utf-8")

# ------------------------------------------------------------------------- fake plugin objects


class ToyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    n: int = 12


class Toy:
    """A conforming adapter: deterministic data, patients 0-3 in train, 4-5 in test."""

    Params: ClassVar[type[BaseModel]] = ToyParams
    names = ("a", "b")

    def info(self, params):
        return DatasetInfo(self.names, (1, 4, 4))

    def images(self, split, params):
        g = torch.Generator().manual_seed(0 if split == "train" else 1)
        return torch.randint(0, 256, (params.n, 1, 4, 4), generator=g, dtype=torch.uint8)

    def load(self, root, split, params, download):
        groups = torch.arange(params.n) % 4 + (0 if split == "train" else 4)
        return ImageSet(self.images(split, params), torch.arange(params.n) % 2, self.names, (), groups)


class ToyBackbone:
    Params: ClassVar[type[BaseModel]] = NoParams

    def encoder(self, in_shape, out_dim, params):
        return nn.Sequential(nn.Flatten(), nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], out_dim))

    def decoder(self, latent_dim, out_shape, params):
        c, h, w = out_shape
        return nn.Sequential(nn.Linear(latent_dim, c * h * w), nn.Unflatten(1, out_shape))


class NotAPlugin:
    """Wrong type: neither info/load nor Params."""


@pytest.fixture
def fake_module(monkeypatch):
    module = types.ModuleType(MOD)
    module.Toy, module.ToyBackbone, module.NotAPlugin = Toy, ToyBackbone, NotAPlugin
    # defined below, resolved when the fixture runs
    module.OtherClassNames, module.NoFiles, module.RefusesAll = OtherClassNames, NoFiles, RefusesAll
    module.NeedsPath = NeedsPath
    monkeypatch.setitem(sys.modules, MOD, module)
    return module


class FakeDist:
    def __init__(self, name: str, version: str = "1.0", broken: bool = False) -> None:
        self._name, self.version, self._broken = name, version, broken

    @property
    def metadata(self):
        if self._broken:
            raise ValueError("unparsable METADATA")
        return {"Name": self._name}


def ep(name: str, value: str, dist: str = "jadekit-toy", version: str = "1.0", group: str = "jadekit.datasets", **kw):
    """An entry point as importlib.metadata yields it, with its distribution attached."""
    return EntryPoint(name, value, group)._for(FakeDist(dist, version, **kw))


def datasets_of(*eps) -> Registry:
    return Registry("jadekit.datasets", "dataset", check_dataset_object, discover=lambda group: list(eps))


def backbones_of(*eps) -> Registry:
    return Registry("jadekit.backbones", "backbone", check_backbone_object, discover=lambda group: list(eps))


# ---------------------------------------------------------------------------------- discovery


def test_listing_imports_nothing():
    reg = datasets_of(ep("toy", "module_that_does_not_exist:Toy", "jadekit-toy", "2.1"), ep("mnist", "x:y", "jadekit", "0.1.0"))
    infos = reg.infos()
    assert list(infos) == ["mnist", "toy"]
    assert infos["toy"][0].provider == "jadekit-toy 2.1"
    assert reg.names() == ["mnist", "toy"]
    assert "module_that_does_not_exist" not in sys.modules


def test_load_instantiates_classes_and_caches(fake_module):
    reg = datasets_of(ep("toy", f"{MOD}:Toy"))
    obj = reg.load("toy")
    assert isinstance(obj, Toy) and reg.load("toy") is obj


def test_unknown_name_lists_available():
    reg = datasets_of(ep("toy", f"{MOD}:Toy"), ep("usps", "a:b"))
    with pytest.raises(PluginError, match=r"unknown dataset 'svnh'\. Available: toy, usps\."):
        reg.load("svnh")


def test_broken_import_names_distribution_and_version_and_breaks_only_its_name(fake_module):
    reg = datasets_of(ep("broken", "no_such_module_xyz:Thing", "jadekit-broken", "0.3.1"), ep("toy", f"{MOD}:Toy"))
    with pytest.raises(PluginError, match=r"dataset 'broken' from jadekit-broken 0\.3\.1 failed to import: ModuleNotFoundError"):
        reg.load("broken")
    assert isinstance(reg.load("toy"), Toy)


def test_a_name_under_another_group_says_which(monkeypatch):
    """An unknown name that is registered elsewhere: under a misspelt group, or as the other kind of plugin."""
    from importlib.metadata import EntryPoints

    from jadekit import registry as registry_module

    elsewhere = [ep("shapes", "jadekit_shapes:Shapes", "jadekit-shapes", group="jadekit.dataset"),
                 ep("shapes-cnn", "jadekit_shapes:CNN", "jadekit-shapes", group="jadekit.backbones")]

    def fake_entry_points(group=None):
        found = EntryPoints(elsewhere)
        return found if group is None else found.select(group=group)

    monkeypatch.setattr(registry_module, "entry_points", fake_entry_points)
    with pytest.raises(PluginError) as typo:
        datasets_of().info("shapes")
    assert ("jadekit-shapes registers 'shapes' under the entry-point group 'jadekit.dataset', which jadekit does not "
            "read: write 'jadekit.datasets' in its pyproject.toml") in typo.value.hint
    with pytest.raises(PluginError) as kind:
        datasets_of().info("shapes-cnn")
    assert kind.value.hint == "'shapes-cnn' is a backbone (from jadekit-shapes), not a dataset: name a dataset here."
    with pytest.raises(PluginError) as nowhere:
        datasets_of().info("nothing")
    assert "needs that install again" in nowhere.value.hint


def test_wrong_type_breaks_the_contract(fake_module):
    reg = datasets_of(ep("bad", f"{MOD}:NotAPlugin", "jadekit-bad", "9"))
    with pytest.raises(PluginError, match=r"jadekit-bad 9 breaks the dataset contract: its entry point "
                                          r"`fake_jadekit_plugin:NotAPlugin`: missing method info\(\).*Params"):
        reg.load("bad")


def test_an_entry_point_naming_a_module_says_so(fake_module):
    reg = datasets_of(ep("bad", MOD, "jadekit-bad", "9"))  # `module`, where `module:Class` was meant
    with pytest.raises(PluginError, match=f"its entry point `{MOD}` names module {MOD}, not a class: missing") as e:
        reg.load("bad")
    assert "jadekit plugins check" not in e.value.hint and "pyproject.toml" in e.value.hint


def test_uninstantiable_class(fake_module):
    class NeedsArgs(Toy):
        def __init__(self, x):
            pass

    fake_module.NeedsArgs = NeedsArgs
    with pytest.raises(PluginError, match="jadekit-toy 1.0 cannot be instantiated"):
        datasets_of(ep("x", f"{MOD}:NeedsArgs")).load("x")


def test_bad_metadata_still_lists():
    reg = datasets_of(ep("odd", "m:o", broken=True))
    assert reg.info("odd").provider == "(unknown distribution) ?"


def test_duplicate_names_across_distributions_name_both(fake_module):
    reg = datasets_of(ep("toy", f"{MOD}:Toy", "jadekit-one", "1.0"), ep("toy", f"{MOD}:Toy", "jadekit-two", "2.0"))
    with pytest.raises(PluginError, match=r"'toy' is registered by jadekit-one 1\.0 and jadekit-two 2\.0"):
        reg.load("toy")


def test_same_distribution_seen_twice_is_not_a_conflict(fake_module):
    reg = datasets_of(ep("toy", f"{MOD}:Toy"), ep("toy", f"{MOD}:Toy"))
    assert isinstance(reg.load("toy"), Toy)


def test_disable_autoload_keeps_only_builtins(monkeypatch):
    reg = datasets_of(ep("toy", "m:o", "jadekit-toy"), ep("mnist", "m:o", "jadekit"))
    monkeypatch.setenv(DISABLE_ENV, "1")
    assert reg.names() == ["mnist"]
    with pytest.raises(PluginError, match="unknown dataset 'toy'"):
        reg.info("toy")
    monkeypatch.setenv(DISABLE_ENV, "0")
    assert reg.names() == ["mnist", "toy"]


def test_discovery_failure_is_a_plugin_error():
    def explode(group):
        raise ValueError("bad entry_points.txt")

    with pytest.raises(PluginError, match=f"bad entry_points.txt.*\n.*{DISABLE_ENV}=1"):
        Registry("g", "dataset", check_dataset_object, discover=explode).names()


def test_real_builtins_are_registered():
    assert {"mnist", "usps", "svhn"} <= set(registry.datasets.names())
    assert registry.backbones.info("paper-mnist").distribution == "jadekit"


# -------------------------------------------------------------------------------- CLI: list


@pytest.fixture
def fake_registries(monkeypatch, fake_module):
    ds = datasets_of(
        ep("toy", f"{MOD}:Toy"),
        ep("broken", "no_such_module_xyz:T", "jadekit-broken", "0.3.1"),
        ep("twice", f"{MOD}:Toy", "jadekit-one"),
        ep("twice", f"{MOD}:Toy", "jadekit-two"),
        ep("renamed", f"{MOD}:OtherClassNames"),
        ep("nofiles", f"{MOD}:NoFiles"),
        ep("needs-path", f"{MOD}:NeedsPath"),
    )
    bb = backbones_of(ep("toy-net", f"{MOD}:ToyBackbone", group="jadekit.backbones"),
                      ep("no-net", f"{MOD}:NotAPlugin", group="jadekit.backbones"),
                      ep("picky-net", f"{MOD}:RefusesAll", group="jadekit.backbones"))
    monkeypatch.setattr(registry, "datasets", ds)
    monkeypatch.setattr(registry, "backbones", bb)
    return ds, bb


def test_list_works_with_broken_and_duplicate_plugins(fake_registries):
    result = runner.invoke(app, ["plugins", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {"kind": "dataset", "name": "broken", "distribution": "jadekit-broken", "version": "0.3.1", "conflict": False} in rows
    assert [r["distribution"] for r in rows if r["name"] == "twice"] == ["jadekit-one", "jadekit-two"]
    assert all(r["conflict"] for r in rows if r["name"] == "twice")
    table = runner.invoke(app, ["plugins", "list"])
    assert table.exit_code == 0 and "toy-net" in table.output and "conflict" in table.output


# ------------------------------------------------------------------------------- CLI: check


def test_check_command(fake_registries, tmp_path):
    ok = runner.invoke(app, ["plugins", "check", "toy", "--root", str(tmp_path), "--set", "n=8"])
    assert ok.exit_code == 0, ok.output
    assert "ok dataset 'toy' (jadekit-toy 1.0)" in ok.output
    net = runner.invoke(app, ["plugins", "check", "toy-net", "--shape", "2,5,7"])
    assert net.exit_code == 0 and "ok backbone 'toy-net' (jadekit-toy 1.0): shapes tried [(2, 5, 7)]" in net.output, net.output
    bad_param = runner.invoke(app, ["plugins", "check", "toy", "--no-load", "--set", "m=1"])
    assert bad_param.exit_code == 2 and "--set m: unknown parameter\nfix: its parameters are n: pass them as --set" in bad_param.output
    renamed = runner.invoke(app, ["plugins", "check", "renamed", "--root", str(tmp_path)])
    assert renamed.exit_code == 1 and "train: class_names ['b', 'a'] differ from info() ['a', 'b']" in renamed.output
    broken = runner.invoke(app, ["plugins", "check", "broken"])
    assert broken.exit_code == 2 and "jadekit-broken 0.3.1 failed to import" in broken.output
    wrong = runner.invoke(app, ["plugins", "check", "no-net"])
    assert wrong.exit_code == 2 and "breaks the backbone contract" in wrong.output
    unknown = runner.invoke(app, ["plugins", "check", "nope"])
    assert unknown.exit_code == 2
    assert ("Available datasets: broken, needs-path, nofiles, renamed, toy, twice; backbones: no-net, picky-net, "
            "toy-net.") in unknown.output
    bad_kind = runner.invoke(app, ["plugins", "check", "toy", "--kind", "foo"])
    assert bad_kind.exit_code == 2 and "--kind must be dataset or backbone, not 'foo'" in bad_kind.output
    bad_shape = runner.invoke(app, ["plugins", "check", "toy-net", "--shape", "1,x,3"])
    assert bad_shape.exit_code == 2 and "--shape expects C,H,W, got '1,x,3'" in bad_shape.output
    empty_shape = runner.invoke(app, ["plugins", "check", "toy-net", "--shape=0,28,28"])  # the user's, not the plugin's
    assert empty_shape.exit_code == 2 and "--shape 0,28,28: channels, height and width must be at least 1" in empty_shape.output
    assert "FAIL" not in empty_shape.output
    assert "unexpected" not in bad_kind.output + bad_shape.output


def _fix(output: str) -> str:
    return next(line for line in output.splitlines() if line.startswith("fix: "))


def test_check_without_data_is_not_a_conformance_failure(fake_registries, tmp_path):
    """Missing files: exit 2 naming the data root and --root/--download, not FAIL (exit 1) with the recipe's words."""
    nowhere = tmp_path / "nowhere"
    res = runner.invoke(app, ["plugins", "check", "nofiles", "--root", str(nowhere)])
    assert res.exit_code == 2, res.output
    assert f"dataset 'nofiles' (jadekit-toy 1.0) was not checked: no usable data under {nowhere}:" in res.output
    assert f"toy train split: {nowhere / 'toy.npz'} not found" in res.output and "FAIL" not in res.output
    assert "--root" in _fix(res.output) and "--download" in _fix(res.output) and "recipe" not in _fix(res.output)
    again = runner.invoke(app, ["plugins", "check", "nofiles", "--root", str(nowhere), "--download"])
    assert again.exit_code == 2 and "--root" in _fix(again.output) and "--download" not in _fix(again.output)
    assert not nowhere.exists()
    no_load = runner.invoke(app, ["plugins", "check", "nofiles", "--root", str(nowhere), "--no-load"])
    assert no_load.exit_code == 0 and "ok dataset 'nofiles' (jadekit-toy 1.0): Params and info()" in no_load.output


def test_check_messages_name_the_cli_options(fake_registries):
    picky = runner.invoke(app, ["plugins", "check", "picky-net", "--shape", "1,6,6"])
    assert picky.exit_code == 1
    assert "accepts none of the shapes tried [(1, 6, 6)] (first refusal: (1, 6, 6): no); pass --shape C,H,W" in picky.output
    bad_value = runner.invoke(app, ["plugins", "check", "toy", "--no-load", "--set", "n=many"])
    assert bad_value.exit_code == 2 and "--set n: Input should be a valid integer" in bad_value.output
    required = runner.invoke(app, ["plugins", "check", "needs-path", "--no-load"])  # the user's to give: exit 2
    assert required.exit_code == 2 and "has parameters without a default: path" in required.output
    assert "--set path=" in required.output and "FAIL" not in required.output
    for res in (picky, bad_value, required):
        assert "shapes=" not in res.output and "params=" not in res.output


def test_check_refuses_options_that_do_not_apply_to_the_plugin_named():
    """`--shape` on a dataset or `--root` on a backbone used to be ignored: the check ran as if it were not given."""
    shape = runner.invoke(app, ["plugins", "check", "usps", "--shape", "1,16,16"])
    assert shape.exit_code == 2 and "--shape applies to a backbone, and 'usps' is a dataset" in shape.output, shape.output
    root = runner.invoke(app, ["plugins", "check", "paper-mnist", "--root", "data", "--download"])
    assert root.exit_code == 2 and "--root, --download apply to a dataset, and 'paper-mnist' is a backbone" in root.output
    assert "fix: leave --root, --download out, or name a dataset." in root.output


def test_check_set_on_a_dataset_without_params():
    res = runner.invoke(app, ["plugins", "check", "usps", "--no-load", "--set", "size=3"])
    assert res.exit_code == 2 and "--set size: unknown parameter\nfix: it takes no parameters: leave --set out." in res.output


# ------------------------------------------------------------------------- conformance: data


def test_good_adapter_conforms(tmp_path):
    assert check_dataset(Toy(), root=tmp_path) == []
    assert check_dataset(Toy) == []  # a class is instantiated; without root no file is read
    assert_dataset(Toy(), tmp_path, {"n": 6})


class WrongDtype(Toy):
    def load(self, root, split, params, download):
        s = super().load(root, split, params, download)
        return types.SimpleNamespace(images=s.images.float(), labels=s.labels)


class ShapeMismatch(Toy):
    def info(self, params):
        return DatasetInfo(self.names, (3, 4, 4))


class OtherClassNames(Toy):
    def load(self, root, split, params, download):
        s = super().load(root, split, params, download)
        return ImageSet(s.images, s.labels, ("b", "a"), s.files, s.groups)


class Random(Toy):
    def images(self, split, params):
        return torch.randint(0, 256, (params.n, 1, 4, 4), dtype=torch.uint8)


class LeakyPatients(Toy):
    def load(self, root, split, params, download):
        s = super().load(root, split, params, download)
        return ImageSet(s.images, s.labels, s.class_names, s.files, torch.arange(params.n) % 4)


class SharedFiles(Toy):
    def load(self, root, split, params, download):
        s = super().load(root, split, params, download)
        files = tuple(Path(root) / f"{i}.png" for i in range(params.n))
        return ImageSet(s.images, s.labels, s.class_names, files)


class OneClass(Toy):
    def info(self, params):
        return DatasetInfo(("only",), (1, 4, 4))


class Crashes(Toy):
    def load(self, root, split, params, download):
        raise DataError("file missing")


class NoFiles(Toy):
    def load(self, root, split, params, download):
        raise DataError(f"toy {split} split: {Path(root) / 'toy.npz'} not found", hint="set `download = true` in the recipe.")


class LaxParams(Toy):
    class Params(BaseModel):  # no extra="forbid": a recipe's `nn = 8` would be dropped, n left at 12
        n: int = 12


class NeedsPath(Toy):
    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        path: str
        n: int = 12


class BadLabelsInLoad(Toy):
    def load(self, root, split, params, download):
        return ImageSet(self.images(split, params), torch.full((params.n,), 5), self.names)


@pytest.mark.parametrize(
    ("adapter", "match"),
    [
        (NotAPlugin(), r"missing method info\(\)"),
        (WrongDtype(), "returned SimpleNamespace, expected jadekit.data.base.ImageSet"),
        (ShapeMismatch(), r"images have shape \(1, 4, 4\), but info\(\) declares \(3, 4, 4\)"),
        (OtherClassNames(), r"class_names \['b', 'a'\] differ from info\(\)"),
        (Random(), "two loads with the same params differ"),
        (LeakyPatients(), "appear in both train and test"),
        (SharedFiles(), "file\\(s\\) in both train and test"),
        (OneClass(), "needs at least 2"),
        (Crashes(), "load\\(split='train'\\) raised DataError: file missing"),
        (LaxParams(), "Params accepts unknown keys: a misspelt recipe key would silently keep its default"),
        (BadLabelsInLoad(),
         "load\\(split='train'\\) built an invalid ImageSet: labels must lie in \\[0, 2\\) \\(one per class name\\), got 5..5"),
    ],
)
def test_broken_adapters_fail(tmp_path, adapter, match):
    problems = check_dataset(adapter, root=tmp_path)
    assert any(__import__("re").search(match, p) for p in problems), problems
    with pytest.raises(ConformanceError, match=match):
        assert_dataset(adapter, tmp_path)


def test_data_errors_are_listed_or_raised(tmp_path):
    """By default a DataError from load is one of the problems; asked to, the check lets it through."""
    found = check_dataset(Crashes(), tmp_path)[0]  # with the line of the adapter's code that raised it
    assert re.fullmatch(r"load\(split='train'\) raised DataError: file missing \(at .*test_plugins\.py:\d+\)", found), found
    with pytest.raises(DataError, match="file missing"):
        check_dataset(Crashes(), tmp_path, raise_data_errors=True)
    with pytest.raises(DataError, match="file missing"):
        assert_dataset(Crashes(), tmp_path, raise_data_errors=True)
    assert check_dataset(Toy(), tmp_path, raise_data_errors=True) == []


def test_bad_params_are_reported():
    assert "Params rejects params {'n': 'many'}" in check_dataset(Toy(), params={"n": "many"})[0]
    assert "params is a NoParams, expected ToyParams" in check_dataset(Toy(), params=NoParams())[0]


# --------------------------------------------------------------------- conformance: backbones


@pytest.mark.parametrize("name", ["paper-mnist", "paper-svhn", "cnn"])
def test_builtin_backbones_conform(name):
    params = {"filters": [4, 4], "pool": [True, False]} if name == "cnn" else None
    assert_backbone(registry.backbones.load(name), params, shapes=[(1, 28, 28), (3, 32, 32)], latent_dims=(1, 7))


BUILTIN_DATASETS = sorted(n for n, ps in registry.datasets.infos().items() if ps[0].distribution == "jadekit")


@pytest.mark.parametrize("name", BUILTIN_DATASETS)
def test_builtin_datasets_declare_themselves(name):
    """Every built-in dataset: structure, default Params and info() (no data files needed)."""
    assert_dataset(registry.datasets.load(name))


class WrongLatent(ToyBackbone):
    def encoder(self, in_shape, out_dim, params):
        return super().encoder(in_shape, out_dim + 1, params)


class WrongDecoderShape(ToyBackbone):
    def decoder(self, latent_dim, out_shape, params):
        c, h, w = out_shape
        return super().decoder(latent_dim, (c, h + 1, w), params)


class NotAModule(ToyBackbone):
    def encoder(self, in_shape, out_dim, params):
        return lambda x: x


class Frozen(ToyBackbone):
    def decoder(self, latent_dim, out_shape, params):
        d = super().decoder(latent_dim, out_shape, params)
        d.requires_grad_(False)
        return d


class RefusesAll(ToyBackbone):
    def encoder(self, in_shape, out_dim, params):
        raise DataError("no")


class RaisesWrongError(ToyBackbone):
    def encoder(self, in_shape, out_dim, params):
        raise ValueError("too small")


@pytest.mark.parametrize(
    ("backbone", "match"),
    [
        (NotAPlugin(), r"missing method encoder\(\)"),
        (WrongLatent(), r"encoder\(shape \(1, 28, 28\), latent 1\) output is \(3, 2\), expected \(3, 1\)"),
        (WrongDecoderShape(), r"decoder\(.*\) output is \(3, 1, 29, 28\), expected \(3, 1, 28, 28\) \(the input shape\)"),
        (NotAModule(), "returned function, expected torch.nn.Module"),
        (Frozen(), "decoder.*has no trainable parameters"),
        (RefusesAll(), r"accepts none of the shapes tried .* \(first refusal: \(1, 28, 28\): no\); pass shapes= with"),
        (RaisesWrongError(), "raised ValueError: too small \\(at .*test_plugins\\.py:\\d+\\) \\(refuse shapes with DataError\\)"),
    ],
)
def test_broken_backbones_fail(backbone, match):
    problems = check_backbone(backbone)
    assert any(__import__("re").search(match, p) for p in problems), problems
    with pytest.raises(ConformanceError, match=match):
        assert_backbone(backbone)


def test_good_backbone_conforms():
    assert check_backbone(ToyBackbone, shapes=[(2, 3, 5)], latent_dims=(1, 4)) == []


# ------------------------------------------------------------------------------ CLI: new


def test_new_scaffolds_a_package(tmp_path):
    target = tmp_path / "pkg"
    result = runner.invoke(app, ["plugins", "new", "pancreas-mri", "--dir", str(target)])
    assert result.exit_code == 0, result.output
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == [
        "README.md", "jadekit_pancreas_mri/__init__.py", "jadekit_pancreas_mri/backbone.py", "jadekit_pancreas_mri/dataset.py",
        "pyproject.toml", "recipes/pancreas-mri.toml", "tests/test_jadekit_pancreas_mri.py",
    ]
    meta = tomllib.loads((target / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "jadekit-pancreas-mri"
    eps = meta["project"]["entry-points"]
    assert eps["jadekit.datasets"] == {"pancreas-mri": "jadekit_pancreas_mri.dataset:PancreasMriDataset"}
    assert eps["jadekit.backbones"] == {"pancreas-mri-cnn": "jadekit_pancreas_mri.backbone:PancreasMriBackbone"}
    recipe = tomllib.loads((target / "recipes/pancreas-mri.toml").read_text())
    assert recipe["primary"]["dataset"] == "pancreas-mri"
    for f in target.rglob("*.py"):
        compile(f.read_text(), str(f), "exec")
    assert "{{" not in "".join(f.read_text() for f in target.rglob("*") if f.is_file())


def test_new_scaffold_modules_conform(tmp_path, monkeypatch):
    """The generated adapter and backbone pass the checks, without installing the package."""
    target = tmp_path / "pkg"
    assert runner.invoke(app, ["plugins", "new", "demo", "--dir", str(target)]).exit_code == 0
    monkeypatch.syspath_prepend(str(target))
    from jadekit_demo.backbone import DemoBackbone
    from jadekit_demo.dataset import DemoDataset

    assert_dataset(DemoDataset(), tmp_path / "data", {"size": 12}, download=True)
    assert_backbone(DemoBackbone(), {"width": 2}, shapes=[(1, 9, 13)], latent_dims=(3,))
    damaged = tmp_path / "data" / "demo" / "thin-train.npz"
    for junk in (damaged.read_bytes()[:100], b""):  # a truncated zip, an empty file: not only ValueError
        damaged.write_bytes(junk)
        with pytest.raises(DataError, match=f"{re.escape(str(damaged))} is damaged"):
            DemoDataset().load(tmp_path / "data", "train", DemoDataset.Params(size=12), download=True)
    for m in [m for m in sys.modules if m.startswith("jadekit_demo")]:
        monkeypatch.delitem(sys.modules, m)


@pytest.mark.parametrize(("name", "match"), [("Bad_Name", "not a valid plugin name"), ("ok", "already exists"),
                                             ("jadekit-foo", "would make the package jadekit-jadekit-foo")])
def test_new_refuses(tmp_path, name, match):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("")
    result = runner.invoke(app, ["plugins", "new", name, "--dir", str(tmp_path / "x")])
    assert result.exit_code == 2 and match in result.output


def test_new_refuses_a_name_already_registered(tmp_path, monkeypatch):
    """`plugins new mnist` would scaffold a package whose dataset clashes with the built-in once installed."""
    result = runner.invoke(app, ["plugins", "new", "mnist", "--dir", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    assert "dataset 'mnist', which jadekit" in result.output and "already registers" in result.output
    assert "pick another name" in _fix(result.output) and "my-mnist" in _fix(result.output)
    assert "Traceback" not in result.output and not (tmp_path / "x").exists()
    # its backbone `NAME-cnn` is checked too (names are read from metadata: nothing is imported)
    monkeypatch.setattr(registry, "datasets", datasets_of())
    monkeypatch.setattr(registry, "backbones", backbones_of(ep("tumour-cnn", "no_such_module_xyz:B", "jadekit-scans",
                                                               group="jadekit.backbones")))
    clash = runner.invoke(app, ["plugins", "new", "tumour", "--dir", str(tmp_path / "y")])
    assert clash.exit_code == 2 and "backbone 'tumour-cnn', which jadekit-scans 1.0 already registers" in clash.output
    assert "pick another name" in _fix(clash.output) and not (tmp_path / "y").exists()
    # a name registered by the scaffold's own distribution (jadekit-NAME, installed earlier) is no clash
    monkeypatch.setattr(registry, "datasets", datasets_of(ep("tumour", "jadekit_tumour.dataset:T", "jadekit_tumour")))
    monkeypatch.setattr(registry, "backbones", backbones_of())
    assert runner.invoke(app, ["plugins", "new", "tumour", "--dir", str(tmp_path / "z")]).exit_code == 0


def test_new_dir_that_is_a_file_is_named(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for target, what in ((afile, f"--dir {afile} is a file, not a directory"),
                         (afile / "demo", f"--dir {afile / 'demo'} cannot be created: {afile} is a file")):
        result = runner.invoke(app, ["plugins", "new", "demo", "--dir", str(target)])
        assert result.exit_code == 2, result.output
        assert what in result.output and "pass --dir with another path" in _fix(result.output)
        assert "output directory and data root" not in result.output and "Traceback" not in result.output
    assert afile.read_text() == "mine"


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's read-only /sys")
def test_new_unwritable_dir_is_named():
    result = runner.invoke(app, ["plugins", "new", "demo", "--dir", "/sys/jadekit-demo"])
    assert result.exit_code == 2, result.output
    assert "--dir /sys/jadekit-demo is not writable" in result.output and "pass --dir with another path" in _fix(result.output)
    assert "output directory and data root" not in result.output and "Traceback" not in result.output


def test_new_on_a_full_disk_leaves_no_half_package(tmp_path, monkeypatch):
    import errno

    real = Path.write_text
    calls = []

    def full(self, *args, **kwargs):
        calls.append(self)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    (tmp_path / "pkg").mkdir()  # an empty directory the user made: kept
    result = runner.invoke(app, ["plugins", "new", "demo", "--dir", str(tmp_path / "pkg")])
    assert result.exit_code == 2, result.output
    assert f"--dir {tmp_path / 'pkg'} is not writable (No space left on device" in result.output
    assert (tmp_path / "pkg").is_dir() and not any((tmp_path / "pkg").iterdir())  # so the same command can be rerun


def _next_steps(output: str) -> list[list[str]]:
    lines = output.split("Next:", 1)[1].strip().splitlines()
    return [shlex.split(line) for line in lines]


@pytest.mark.parametrize("where", ["pkg", "scaf dir/demo", "it's [x]"])
def test_new_prints_next_steps_that_paste_into_a_shell(tmp_path, where):
    target = tmp_path / where
    result = runner.invoke(app, ["plugins", "new", "demo", "--dir", str(target)])
    assert result.exit_code == 0, result.output
    assert _next_steps(result.output) == [["pip", "install", "-e", f"{target}[dev]"], ["pytest", f"{target}/tests"],
                                          ["jadekit", "run", f"{target}/recipes/demo.toml"],
                                          ["jadekit", "eval", "runs/demo"], ["jadekit", "report", "runs/demo/jade/seed-0"]]
    if where == "pkg":  # an ordinary path prints as before: only the pip line (brackets) is quoted
        assert f"  pytest {target}/tests\n  jadekit run {target}/recipes/demo.toml" in result.output
        assert f"pip install -e '{target}[dev]'" in result.output


@pytest.mark.slow
def test_new_package_installs_passes_its_tests_and_runs(tmp_path):
    """`plugins new demo` -> pip install (into a private target, not the shared venv) -> pytest -> jadekit run."""
    target = tmp_path / "jadekit-demo"
    assert runner.invoke(app, ["plugins", "new", "demo", "--dir", str(target)]).exit_code == 0
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site), str(target)]
    subprocess.run(pip, check=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=target, env=env, check=True)
    jadekit = str(Path(sys.executable).parent / "jadekit")
    listed = subprocess.run([jadekit, "plugins", "list", "--json"], env=env, check=True, capture_output=True, text=True, cwd=target)
    assert {"demo", "demo-cnn"} <= {r["name"] for r in json.loads(listed.stdout)}
    run = [jadekit, "run", "recipes/demo.toml", "--set", "train.steps=4", "--set", "train.eval_every=2"]
    done = subprocess.run(run, env=env, cwd=target, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (target / "runs/demo/jade/seed-0/final.json").exists()


# ------------------------------------------------------------------------- docs/plugins.md


def _doc_block(section: str, lang: str) -> str:
    """The first ```lang block of a `### section` of docs/plugins.md."""
    body = re.split(r"^### ", DOC, flags=re.M)
    text = next(s for s in body if s.startswith(section))
    return re.search(rf"```{lang}\n(.*?)```", text, re.S).group(1)


def test_tutorial_code_conforms_and_reports_damaged_files(tmp_path, monkeypatch):
    """The tutorial's dataset.py and backbone.py, verbatim: they pass the checks, and a damaged file is one DataError."""
    package = tmp_path / "src" / "jadekit_shapes"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "dataset.py").write_text(_doc_block("2.3", "python"))
    (package / "backbone.py").write_text(_doc_block("2.4", "python"))
    monkeypatch.syspath_prepend(str(package.parent))
    for m in [m for m in sys.modules if m.startswith("jadekit_shapes")]:
        monkeypatch.delitem(sys.modules, m)
    from jadekit_shapes.backbone import ShapesCNN
    from jadekit_shapes.dataset import Shapes

    data = tmp_path / "data"
    assert_dataset(Shapes(), data, {"size": 16}, download=True)
    assert_backbone(ShapesCNN(), {"width": 2}, shapes=[(1, 24, 24)], latent_dims=(3,))
    with pytest.raises(DataError, match="not found") as missing:
        Shapes().load(tmp_path / "nowhere", "train", Shapes.Params(), download=False)
    assert "--download" in missing.value.hint
    damaged = data / "shapes" / "noise40-16-train.npz"
    good = damaged.read_bytes()
    for junk in (b"junk" * 10, good[: len(good) // 2], b""):
        damaged.write_bytes(junk)
        with pytest.raises(DataError) as err:
            Shapes().load(data, "train", Shapes.Params(size=16), download=True)
        assert str(damaged) in err.value.message and "delete it" in err.value.hint
        assert damaged.read_bytes() == junk  # nothing written is lost
    for m in [m for m in sys.modules if m.startswith("jadekit_shapes")]:
        monkeypatch.delitem(sys.modules, m)


def test_shortcut_note_tells_what_the_scaffold_writes(tmp_path):
    note = " ".join(line.lstrip("> ") for line in DOC.split("> Shortcut:")[1].split("\n\n")[0].splitlines())
    target, files = create("shapes", tmp_path / "jadekit-shapes")
    written = {str(f.relative_to(target)) for f in files}
    modules = {f"jadekit_shapes/{m}.py" for m in ("__init__", "dataset", "backbone")}
    assert modules <= written and "`jadekit_shapes/{__init__,dataset,backbone}.py`" in note
    for rel in sorted(written - modules):
        assert f"`{rel}`" in note, rel
    dataset = (target / "jadekit_shapes" / "dataset.py").read_text()
    for field in re.findall(r"^    (\w+): [^=]+= Field\(", dataset, re.M):
        assert f"`{field}`" in note, field
    for cls in re.findall(r"^class (\w+)", dataset + (target / "jadekit_shapes" / "backbone.py").read_text(), re.M):
        assert cls.endswith("BackboneParams") or f"`{cls}`" in note, cls
