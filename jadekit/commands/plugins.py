"""`jadekit plugins ...`: list, check and scaffold dataset and backbone plugins."""

from __future__ import annotations

import json
import shlex
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape as rich_escape
from rich.table import Table

if TYPE_CHECKING:
    from pydantic import BaseModel

    from jadekit.errors import DataError

plugins_app = typer.Typer(no_args_is_help=True, help="List, check and scaffold plugins.")


def register(app: typer.Typer) -> None:
    app.add_typer(plugins_app, name="plugins")


@plugins_app.command("list")
def plugins_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every dataset and backbone with its providing distribution (imports no plugin code)."""
    from jadekit.cli import user_errors
    from jadekit.registry import backbones, datasets

    with user_errors():
        rows = [
            {"kind": reg.kind, "name": name, "distribution": p.distribution, "version": p.version, "conflict": len(ps) > 1}
            for reg in (datasets, backbones)
            for name, ps in reg.infos().items()
            for p in ps
        ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table("kind", "name", "distribution", "version", title="jadekit plugins")
    for r in rows:
        table.add_row(r["kind"], r["name"] + (" [red](conflict)[/]" if r["conflict"] else ""), r["distribution"], r["version"])
    from jadekit.cli import out

    out.print(table)


KindOpt = Annotated[str | None, typer.Option("--kind", help="dataset or backbone, when NAME is both.")]


def _parse_params(items: list[str] | None) -> dict:
    from jadekit.config import apply_overrides

    return apply_overrides({}, items or [])


def _parse_shape(text: str) -> tuple[int, int, int]:
    from jadekit.errors import JadekitError

    try:
        c, h, w = (int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise JadekitError(f"--shape expects C,H,W, got {text!r}", hint="write it like --shape 1,64,64.") from None
    if min(c, h, w) < 1:
        raise JadekitError(f"--shape {text}: channels, height and width must be at least 1",
                           hint="write it like --shape 1,64,64.")
    return c, h, w


def _validate_params(obj: object, params: dict, header: str) -> BaseModel | None:
    """The plugin's Params from the --set values (None without any: the check then tries the defaults).

    Raises:
        JadekitError: a --set value does not fit, or none was given for a parameter without a default (a user error,
            exit 2, not a conformance failure).
    """
    from pydantic import ValidationError

    from jadekit.config import format_validation_error, parameters_hint
    from jadekit.errors import JadekitError

    model = obj.Params
    try:
        if params:
            return model.model_validate(params)
        model.model_validate({})  # the check tries the defaults: parameters without one must come from --set
        return None
    except ValidationError as e:
        if not params:
            if any(x["type"] != "missing" for x in e.errors()):
                return None  # defaults that break the plugin's own rules: a conformance failure, reported by the check
            missing = [".".join(map(str, x["loc"])) for x in e.errors()]
            raise JadekitError(f"{header} has parameters without a default: {', '.join(missing)}",
                               hint=f"pass them as --set NAME=VALUE, e.g. --set {missing[0]}=...") from None
        lines = [f"  {line}" for line in format_validation_error(e, prefix="--set")]
        raise JadekitError(f"{header} rejects the --set values:\n" + "\n".join(lines),
                           hint=parameters_hint(model, "--set")) from None


def _no_data(header: str, root: Path, e: DataError, download: bool) -> DataError:
    """Missing or unreadable data files: the check cannot run, which is not a conformance failure (exit 2)."""
    from jadekit.errors import DataError

    ways = ["pass --root with a data root that holds its files"]
    if not download:
        ways.append("add --download to let the plugin fetch them")
    advice = ""
    if e.hint:
        advice = f"\n  the plugin's own advice: {e.hint}"
        ways.append("follow the plugin's advice above")
    return DataError(f"{header} was not checked: no usable data under {root}:\n{textwrap.indent(e.message, '  ')}{advice}",
                     hint=f"{', or '.join(ways)}; --no-load checks its Params and info() without data.")


@plugins_app.command("check")
def plugins_check(
    name: Annotated[str, typer.Argument(help="A registered dataset or backbone name.")],
    kind: KindOpt = None,
    param: Annotated[list[str] | None, typer.Option("--set", help="A plugin parameter: --set size=32 (repeatable).")] = None,
    root: Annotated[Path | None, typer.Option(help="Data root for a dataset; default $JADEKIT_DATA, else ~/.cache/jadekit.")] = None,
    no_load: Annotated[bool, typer.Option("--no-load", help="Dataset: check Params and info() only, read no file.")] = False,
    download: Annotated[bool, typer.Option(help="Dataset: let load() download missing files.")] = False,
    shape: Annotated[list[str] | None, typer.Option("--shape", help="Backbone: image shape C,H,W to try (repeatable).")] = None,
) -> None:
    """Run the conformance checks (jadekit.testing) on one installed plugin; exit 1 when it fails, 2 when it cannot run."""
    from jadekit import registry, testing
    from jadekit.cli import err, out, user_errors
    from jadekit.config import DataConfig
    from jadekit.errors import DataError, JadekitError, PluginError

    with user_errors():
        if kind not in (None, "dataset", "backbone"):
            raise JadekitError(f"--kind must be dataset or backbone, not {kind!r}", hint="leave --kind out unless NAME is both.")
        regs = [r for r in (registry.datasets, registry.backbones) if kind in (None, r.kind) and name in r.infos()]
        if not regs:
            known = [f"{r.kind}s: {', '.join(r.names()) or '(none)'}" for r in (registry.datasets, registry.backbones)
                     if kind in (None, r.kind)]
            raise PluginError(f"no {kind or 'dataset or backbone'} named '{name}'. Available {'; '.join(known)}.",
                              hint="install the plugin that provides it (`jadekit plugins list` shows what is installed).")
        kinds = {r.kind for r in regs}
        dataset_options = [o for o, given in (("--root", root is not None), ("--no-load", no_load), ("--download", download))
                           if given]
        for options, applies_to in ((["--shape"] if shape else [], "backbone"), (dataset_options, "dataset")):
            if options and applies_to not in kinds:  # then NAME is only the other kind
                raise JadekitError(f"{', '.join(options)} appl{'ies' if len(options) == 1 else 'y'} to a {applies_to}, "
                                   f"and '{name}' is a {regs[0].kind}",
                                   hint=f"leave {', '.join(options)} out, or name a {applies_to}.")
        params = _parse_params(param)
        failed = False
        for reg in regs:
            info = reg.info(name)
            obj = reg.load(name)
            header = f"{reg.kind} '{name}' ({info.provider})"
            p = _validate_params(obj, params, header)
            if reg.kind == "dataset":
                data_root = None if no_load else (root or DataConfig(dataset=name).data_root())
                try:
                    problems = testing.check_dataset(obj, data_root, p, download=download, raise_data_errors=True)
                except DataError as e:
                    raise _no_data(header, data_root, e, download) from None
                what = "Params and info()" if data_root is None else f"train and test splits under {data_root}"
            else:
                shapes = [_parse_shape(s) for s in shape] if shape else testing.DEFAULT_SHAPES
                problems = testing.check_backbone(obj, p, shapes=shapes, shapes_option="--shape C,H,W")
                what = f"shapes tried {[tuple(s) for s in shapes]}, latent sizes {list(testing.DEFAULT_LATENT_DIMS)}"
            if problems:
                failed = True
                err.print(f"[bold red]FAIL[/] {header}: {len(problems)} problem(s)", highlight=False)
                for p in problems:
                    err.print(f"  - {p}", highlight=False, soft_wrap=True, markup=False)
            else:
                out.print(f"[green]ok[/] {header}: {rich_escape(what)}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


@plugins_app.command("new")
def plugins_new(
    name: Annotated[str, typer.Argument(help="Plugin name, e.g. `demo` (makes package jadekit-demo).")],
    directory: Annotated[Path | None, typer.Option("--dir", help="Where to create it; default ./jadekit-NAME.")] = None,
) -> None:
    """Scaffold a plugin package: a dataset, a backbone, conformance tests and a recipe."""
    from jadekit.cli import out, user_errors
    from jadekit.scaffold import create

    with user_errors():
        target, files = create(name, directory)
    out.print(f"[green]created[/] {rich_escape(str(target))} ({len(files)} files). Next:", highlight=False)
    q = shlex.quote  # quotes a path only where the shell needs it ('…[dev]' always: brackets are glob characters)
    out.print(f"  pip install -e {q(f'{target}[dev]')}\n  pytest {q(f'{target}/tests')}\n"
              f"  jadekit run {q(f'{target}/recipes/{name}.toml')}\n"
              f"  jadekit eval {q(f'runs/{name}')}\n  jadekit report {q(f'runs/{name}/jade/seed-0')}",
              highlight=False, markup=False, soft_wrap=True)
