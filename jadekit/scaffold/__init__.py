"""`jadekit plugins new`: render the plugin package template under `template/` for a new name."""

from __future__ import annotations

import re
from pathlib import Path

from jadekit.errors import JadekitError, PluginError
from jadekit.io import output_dir_error, refuse_file_as_output_dir, touches

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


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def check_name_is_free(name: str) -> None:
    """Refuse a name whose dataset (`name`) or backbone (`name-cnn`) another distribution already registers.

    Reads entry-point metadata only (no plugin is imported). A name registered by `jadekit-NAME` itself is
    allowed: the new package replaces that distribution when installed.

    Raises:
        PluginError: once installed, the scaffold would clash with that registration.
    """
    from jadekit import registry

    dist = substitutions(name)["{{dist}}"]
    for reg, registered in ((registry.datasets, name), (registry.backbones, f"{name}-cnn")):
        others = [p for p in reg.infos().get(registered, []) if _normalized(p.distribution) != dist]
        if others:
            by = " and ".join(p.provider for p in others)
            raise PluginError(
                f"'{name}' would register {reg.kind} '{registered}', which {by} already registers; once installed, "
                f"both would clash and every recipe naming '{registered}' would fail",
                hint=f"pick another name, e.g. `jadekit plugins new my-{name}` (`jadekit plugins list` shows the "
                     "names in use).",
            )


def _directory_hint(name: str, directory: Path | None) -> str:
    default = f"./jadekit-{name}"
    return (f"pass --dir with another path: a new or empty directory you can write to (e.g. --dir {default})."
            if directory is not None else "run it where you can write, or pass --dir with a new or empty directory you can "
            "write to.")


def create(name: str, directory: Path | None = None) -> tuple[Path, list[Path]]:
    """Write a new plugin package for `name` into `directory` (default ./jadekit-NAME).

    Returns:
        The package directory and the files written.

    Raises:
        JadekitError: the name is not a valid plugin name or is already registered, or the directory is not
            empty, is a file or is not writable (the files written so far are then removed again).
    """
    if not NAME.match(name):
        raise JadekitError(
            f"'{name}' is not a valid plugin name",
            hint="use lower-case letters, digits and single dashes, starting with a letter (e.g. `pancreas-mri`).",
        )
    if name.startswith("jadekit-"):
        raise JadekitError(f"'{name}' would make the package jadekit-{name}",
                           hint=f"name the plugin without the prefix: `jadekit plugins new {name.removeprefix('jadekit-')}` "
                                f"makes {name}.")
    check_name_is_free(name)
    subs = substitutions(name)
    target = Path(directory) if directory is not None else Path.cwd() / subs["{{dist}}"]
    option = "--dir" if directory is not None else "the default --dir"
    refuse_file_as_output_dir(target, option, _directory_hint(name, directory))
    if target.exists() and any(target.iterdir()):
        raise JadekitError(f"{target} already exists and is not empty", hint="pick another --dir, or remove it.")
    if not TEMPLATE.is_dir():
        raise JadekitError(f"the plugin template is missing from this installation ({TEMPLATE})",
                           hint="reinstall jadekit, or install it from a source checkout with `pip install -e`.")
    rendered = []
    for src in sorted(TEMPLATE.rglob("*.tmpl")):
        rel = str(src.relative_to(TEMPLATE).with_suffix(""))
        text = src.read_text(encoding="utf-8")
        for key, value in subs.items():
            rel, text = rel.replace(key, value), text.replace(key, value)
        rendered.append((target / rel, text))
    written: list[Path] = []
    made: list[Path] = []  # directories this call created, removed again (if empty) on failure
    try:
        for dest, text in rendered:
            for d in reversed([dest.parent, *dest.parent.parents]):
                if not d.exists():
                    d.mkdir()
                    made.append(d)
            dest.write_text(text, encoding="utf-8")
            written.append(dest)
    except OSError as e:  # unwritable, read-only or full: leave no half-made package behind
        for f in [*written, *((dest,) if dest not in written else ())]:
            f.unlink(missing_ok=True)
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                pass
        if not touches(e, target):
            raise
        raise output_dir_error(target, option, _directory_hint(name, directory), e) from None
    return target, written
