"""User-facing errors: each names the problem and the fix; the CLI maps them to exit codes."""

from __future__ import annotations

import importlib.util
import re
import sys
import traceback
from pathlib import Path


class JadekitError(Exception):
    """Base of every error jadekit reports without a traceback.

    Attributes:
        exit_code: process exit status the CLI uses for this error.
    """

    exit_code: int = 2

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  fix: {hint}")

    def __reduce__(self):  # rebuilt from its attributes: subclasses' __init__ signatures differ (worker -> parent)
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[JadekitError], args: tuple, attributes: dict) -> JadekitError:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(attributes)
    return error


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut to `limit` characters ("(no message)" if it has none)."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else "(no message)"


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def brief(text: str, limit: int = 300) -> str:
    """`text` on one line (ANSI colour codes dropped), cut to at most `limit` characters at a boundary.

    A longer text ends at its last full sentence within `limit` when that keeps at least half of it, else at the
    last whole word, followed by "…": never mid-word, as torch's multi-line messages would be by a plain slice.
    """
    text = " ".join(_ANSI.sub("", str(text)).split())
    if len(text) <= limit:
        return text
    ends = [m.end() for m in re.finditer(r"[.;!?](?=\s)", text[: limit - 1])]  # room for " …"
    if ends and ends[-1] >= limit // 2:
        return text[: ends[-1]].rstrip(".;") + " …"
    cut = text[:limit].rfind(" ")  # a space at limit - 1 keeps the word before it whole
    return (text[:cut] if cut > 0 else text[: limit - 1]).rstrip(" ,;:") + "…"


def raised_in(e: BaseException, *owners: object) -> str:
    """`" (at FILE:LINE)"`: the innermost line of `e`'s traceback inside the package of one of `owners` (a plugin's
    adapter or backbone, or a module's name), so a plugin's author finds their failing line without a traceback; for
    a SyntaxError, its own file and line. "" when none is there. A built-in owner counts only its own module:
    jadekit's engine, which calls every plugin, is nobody's code. Never raises: it runs while reporting an error."""
    try:
        roots = [root for owner in owners for root in _package_roots(owner)]
        places = [(f.filename, f.lineno) for f in reversed(traceback.extract_tb(e.__traceback__))]
        if isinstance(e, SyntaxError) and e.filename:  # raised by the import machinery, about the file it could not parse
            places.insert(0, (e.filename, e.lineno))
        for filename, lineno in places:
            if filename.startswith("<"):  # <frozen importlib._bootstrap>, <string>: no file
                continue
            file = Path(filename).resolve()
            if any(file == root or file.is_relative_to(root) for root in roots):
                return f" (at {filename}:{lineno})" if lineno else f" (in {filename})"
    except Exception:  # noqa: BLE001 - an odd finder or path: the message goes without a location
        pass
    return ""


def _package_roots(owner: object) -> list[Path]:
    """The folders (or the one file) of `owner`'s top-level package; of its own module if it is jadekit's."""
    name = owner if isinstance(owner, str) else getattr(owner, "__module__", None) or type(owner).__module__
    name = name if name.split(".")[0] == "jadekit" else name.split(".")[0]
    module = sys.modules.get(name)
    if module is not None:
        places = getattr(module, "__path__", None) or [getattr(module, "__file__", None)]  # a package's folders, or a file
    else:  # a top-level package that failed to import: where it would have come from (finding it imports nothing)
        spec = importlib.util.find_spec(name)
        places = (spec.submodule_search_locations or [spec.origin]) if spec else []
    return [Path(p).resolve() for p in places if p]


def is_out_of_memory(e: BaseException) -> bool:
    """Whether `e` says the machine (or the GPU) ran out of memory: not a plugin's bug, whichever code asked."""
    torch_oom = getattr(sys.modules.get("torch"), "OutOfMemoryError", MemoryError)  # no torch imported: no torch OOM
    return isinstance(e, MemoryError | torch_oom) or "can't allocate memory" in str(e)


def plugin_failure(e: BaseException, *owners: object, limit: int = 300) -> str:
    """`"Type: message (at FILE:LINE)"`: a plugin's exception as jadekit's messages quote it, its message on one line
    (`brief`) and the line of `owners`' code that raised it (`raised_in`)."""
    return f"{type(e).__name__}: {brief(str(e), limit)}{raised_in(e, *owners)}"


RESUME_HINT = "run the same command again to continue from the checkpoints (add --resume if you change the recipe)."


class RecipeError(JadekitError):
    """A recipe (or an override) is malformed; carries every problem found at once."""

    def __init__(self, problems: list[str], *, source: str | None = None, hint: str | None = None) -> None:
        self.problems = problems
        where = f" in {source}" if source else ""
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s){where}:\n{lines}", hint=hint)


class PluginError(JadekitError):
    """A plugin is unknown, broken on import, duplicated or breaks its contract."""


class InvalidImageSet(PluginError):
    """A dataset's `load` built an ImageSet that breaks the contract (dtype, shape, label range).

    Attributes:
        problems: each violation, e.g. "labels must lie in [0, 2) (one per class name), got 5..5".
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("dataset returned invalid data: " + "; ".join(problems))


class DataError(JadekitError):
    """Data files are missing, corrupt, or do not fit the recipe (classes, shapes, counts)."""


class MissingFilesError(DataError):
    """A split's data files are absent and could not be downloaded (`data.files.missing_files_error`)."""


class RunDirError(JadekitError):
    """An output or run directory cannot be used as asked (foreign recipe, unwritable, corrupt)."""


class TrainingDiverged(JadekitError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""

    exit_code = 3


class Interrupted(JadekitError):
    """The user pressed Ctrl-C; a checkpoint was written first."""

    exit_code = 130
