"""File helpers shared by the dataset adapters: find, fetch and decompress data files."""

from __future__ import annotations

import bz2
import gzip
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from jadekit.errors import DataError, MissingFilesError

_ROOT_WAYS = '`root = "..."` in the recipe\'s [primary] or [auxiliary] table, or the environment variable JADEKIT_DATA'


def missing_files_error(
    dataset: str, split: str, missing: Sequence[str], cause: str | None = None, layout: Sequence[str] = ()
) -> MissingFilesError:
    """The one error raised when a split's files are absent and cannot be downloaded.

    Args:
        dataset: dataset name as the user knows it, e.g. "MNIST".
        split: "train" or "test".
        missing: the expected file paths (or alternatives), one entry per file.
        cause: short text of the failed download, if one was tried (the fix then does not suggest downloading).
        layout: the missing files' paths relative to the data root, e.g. "USPS/usps.bz2".
    """
    lines = "\n".join(f"    {m}" for m in missing)
    message = f"{dataset} {split} split: data files not found:\n{lines}"
    holding = " and ".join(layout) if layout else "them in the same layout"
    other_root = f"point jadekit at a data root that holds {holding} ({_ROOT_WAYS})"
    if cause:
        message += f"\n  download failed: {cause}"
        hint = f"check the internet connection and try again, put the files at the paths above yourself, or {other_root}"
    else:
        hint = f"put the files at the paths above, {other_root}, or set `download = true` to fetch them (needs internet)"
    return MissingFilesError(message, hint=hint)


def corrupt_file_error(path: Path, problem: str | Exception) -> DataError:
    """Error for a data file that exists but cannot be read as what it should be.

    Args:
        path: the file.
        problem: what is wrong, or the exception its reader raised.
    """
    if isinstance(problem, Exception):
        problem = _brief(problem)
    return DataError(
        f"data file {path} is corrupt or truncated: {problem}",
        hint=f"delete {path} and download it again (`download = true`) or copy it again",
    )


def require_files(
    dataset: str,
    split: str,
    wanted: Sequence[tuple[Path, ...]],
    download: bool,
    fetch: Callable[[], object],
    root: Path | None = None,
) -> list[Path]:
    """Return one existing path per wanted file, downloading once if any is missing.

    Args:
        dataset: dataset name for error messages.
        split: split name for error messages.
        wanted: per file, the paths it may have, in order of preference (e.g. raw, then .gz).
        download: whether `fetch` may be called when files are missing.
        fetch: downloads the files into place; any exception it raises means failure.
        root: the data root, to name the files' layout under it in the error.

    A download that fails (or is interrupted) leaves none of the wanted files it created, since any of them may be
    partial, and no folders it created that are left empty; anything else it wrote (e.g. `*.part`) is kept.

    Raises:
        DataError: files are missing and `download` is false or the download failed.
    """
    found = _first_existing(wanted)
    if all(found):
        return found  # type: ignore[return-value]
    cause = None
    if download:
        created = _absent_dirs(wanted)
        existed = {p for alts in wanted for p in alts if p.exists() or p.is_symlink()}  # a dangling link is the user's
        fetched = False
        try:
            fetch()
            fetched = True
        except Exception as e:  # offline, checksum mismatch, server down: all mean "no files"
            cause = _brief(e)
        finally:  # also on Ctrl-C: no partial wanted files, no empty folders (torchvision creates them first)
            if not fetched:
                _remove_new_files(wanted, existed)
            _remove_empty(created)
        found = _first_existing(wanted)
        if all(found):
            return found  # type: ignore[return-value]
        cause = cause or "download finished but the files are still missing"
    absent = [alts for alts, f in zip(wanted, found, strict=True) if f is None]
    layout = [str(alts[0].relative_to(root)) for alts in absent] if root is not None else []
    raise missing_files_error(dataset, split, [_alternatives(alts) for alts in absent], cause, layout)


def read_bytes(path: Path) -> bytes:
    """Read a file, decompressing it when its name ends in .gz or .bz2.

    Raises:
        DataError: the file cannot be read or its compressed stream is broken.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        if path.suffix == ".bz2":
            return bz2.decompress(path.read_bytes())
        return path.read_bytes()
    except (OSError, EOFError, ValueError, zlib.error) as e:  # BadGzipFile is an OSError
        raise corrupt_file_error(path, e) from e


def _absent_dirs(wanted: Sequence[tuple[Path, ...]]) -> list[Path]:
    """The wanted files' folders and their ancestors that do not exist yet, deepest first."""
    absent = set()
    for path in (p for alts in wanted for p in alts):
        folder = path.parent
        while folder != folder.parent and not folder.exists():
            absent.add(folder)
            folder = folder.parent
    return sorted(absent, key=lambda d: len(d.parts), reverse=True)


def _remove_new_files(wanted: Sequence[tuple[Path, ...]], existed: set[Path]) -> None:
    """Delete the wanted files a failed download created: they may be cut short, and would then be read as data."""
    for path in (p for alts in wanted for p in alts if p not in existed):
        try:
            if path.is_file() and not path.is_symlink():
                path.unlink()
        except OSError:
            pass  # runs in a `finally`: never replace the download's own error (or Ctrl-C) with this one


def _remove_empty(folders: Sequence[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()  # only if empty: whatever the download did write is kept
        except OSError:
            pass


def _first_existing(wanted: Sequence[tuple[Path, ...]]) -> list[Path | None]:
    return [next((p for p in alts if p.is_file()), None) for alts in wanted]


def _alternatives(paths: tuple[Path, ...]) -> str:
    others = [p.name if p.parent == paths[0].parent else str(p) for p in paths[1:]]
    return str(paths[0]) + "".join(f" (or {o})" for o in others)


def _brief(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
