"""`jadekit plugins new`: render the plugin package template under `template/` for a new name."""

from __future__ import annotations

import re
from pathlib import Path

from jadekit.errors import JadekitError

TEMPLATE = Path(__file__).parent / "template"
NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def substitutions(name: str) -> dict[str, str]:
    """Placeholders of the template: `{{name}}` (registered name), `{{dist}}`, `{{package}}`, `{{Class}}`."""
    return {
        "{{name}}": name,
        "{{dist}}": f"jadekit-{name}",
        "{{package}}": "jadekit_" + name.replace("-", "_"),
        "{{Class}}": "".join(part.capitalize() for part in name.split("-")),
    }


def create(name: str, directory: Path | None = None) -> tuple[Path, list[Path]]:
    """Write a new plugin package for `name` into `directory` (default ./jadekit-NAME).

    Returns:
        The package directory and the files written.

    Raises:
        JadekitError: the name is not a valid plugin name, or the directory is not empty.
    """
    if not NAME.match(name):
        raise JadekitError(
            f"'{name}' is not a valid plugin name",
            hint="use lower-case letters, digits and single dashes, starting with a letter (e.g. `pancreas-mri`).",
        )
    subs = substitutions(name)
    target = Path(directory) if directory is not None else Path.cwd() / subs["{{dist}}"]
    if target.exists() and any(target.iterdir()):
        raise JadekitError(f"{target} already exists and is not empty", hint="pick another --dir, or remove it.")
    if not TEMPLATE.is_dir():
        raise JadekitError(f"the plugin template is missing from this installation ({TEMPLATE})",
                           hint="reinstall jadekit, or install it from a source checkout with `pip install -e`.")
    written = []
    for src in sorted(TEMPLATE.rglob("*.tmpl")):
        rel = str(src.relative_to(TEMPLATE).with_suffix(""))
        text = src.read_text(encoding="utf-8")
        for key, value in subs.items():
            rel, text = rel.replace(key, value), text.replace(key, value)
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(text, encoding="utf-8")
        written.append(dest)
    return target, written
