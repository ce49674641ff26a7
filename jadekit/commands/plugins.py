"""`jadekit plugins ...`: list, check and scaffold dataset and backbone plugins."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

plugins_app = typer.Typer(no_args_is_help=True, help="List, check and scaffold plugins.")


def register(app: typer.Typer) -> None:
    app.add_typer(plugins_app, name="plugins")


@plugins_app.command("list")
def plugins_list(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Every dataset and backbone with its providing distribution (imports no plugin code)."""
    from jadekit.registry import backbones, datasets

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


