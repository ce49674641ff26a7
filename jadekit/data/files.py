"""File helpers shared by the dataset adapters: find, fetch and decompress data files."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from filelock import FileLock

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
    fetch: Callable[[Path], object],
    root: Path,
) -> list[Path]:
    """Return one existing path per wanted file, downloading once if any is missing.

    Args:
        dataset: dataset name for error messages.
        split: split name for error messages.
        wanted: per file, the paths it may have under `root`, in order of preference (e.g. raw, then .gz).
        download: whether `fetch` may be called when files are missing.
        fetch: downloads the files into the folder it is given, laid out as under `root`; any exception it raises
            means failure.
        root: the data root.

    The download goes to a fresh folder beside the data, and only a finished download's files are moved into
    place, each in one atomic step: the data root never holds a partial file, a failed or interrupted download
    leaves nothing behind, and files that were there are never replaced. Processes on one machine that need the
    same files (parallel runs, `jadekit run --jobs`) download them once: the others wait, then read them.

    Raises:
        DataError: files are missing and `download` is false or the download failed.
    """
    found = _first_existing(wanted)
    if all(found) or not download:
        return _all_or_error(dataset, split, wanted, found, root, cause=None)
    with FileLock(_lock_path(root)):
        found = _first_existing(wanted)  # another process may have fetched them while this one waited
        if all(found):
            return found  # type: ignore[return-value]
        created = _absent_folders(root)
        staging = None
        try:
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".jadekit-download-", dir=root))
            fetch(staging)
            _move_new_files(staging, root)
            cause = "download finished but the files are still missing"
        except Exception as e:  # offline, checksum mismatch, server down, read-only root: all mean "no files"
            cause = _brief(e)
        finally:  # also on Ctrl-C
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
            _remove_empty(created)
        return _all_or_error(dataset, split, wanted, _first_existing(wanted), root, cause)


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


def _all_or_error(
    dataset: str, split: str, wanted: Sequence[tuple[Path, ...]], found: list[Path | None], root: Path, cause: str | None
) -> list[Path]:
    if all(found):
        return found  # type: ignore[return-value]
    absent = [alts for alts, f in zip(wanted, found, strict=True) if f is None]
    layout = [str(alts[0].relative_to(root)) for alts in absent]
    raise missing_files_error(dataset, split, [_alternatives(alts) for alts in absent], cause, layout)


def _lock_path(root: Path) -> Path:
    """One lock per data root and machine, in the temp folder: the data root may be read-only or shared."""
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"jadekit-download-{key}.lock"


def _move_new_files(staging: Path, root: Path) -> None:
    """Move every file the download wrote into its place under `root`, keeping the files already there."""
    for path in sorted(p for p in staging.rglob("*") if p.is_file()):
        target = root / path.relative_to(staging)
        if target.exists() or target.is_symlink():  # the user's file (or link to a shared store) stays
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)  # atomic: readers see no file or the whole file


def _absent_folders(folder: Path) -> list[Path]:
    """`folder` and its ancestors that do not exist yet, deepest first."""
    absent = []
    while folder != folder.parent and not folder.exists():
        absent.append(folder)
        folder = folder.parent
    return absent


def _remove_empty(folders: Sequence[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()  # only if empty
        except OSError:
            pass


def _first_existing(wanted: Sequence[tuple[Path, ...]]) -> list[Path | None]:
    return [next((p for p in alts if p.is_file()), None) for alts in wanted]


def _alternatives(paths: tuple[Path, ...]) -> str:
    others = [p.name if p.parent == paths[0].parent else str(p) for p in paths[1:]]
    broken = [p for p in paths if p.is_symlink()]  # absent, yet a link: it points at nothing
    return (
        str(paths[0])
        + "".join(f" (or {o})" for o in others)
        + "".join(f" ({p.name} is a link to {os.readlink(p)}, which does not exist)" for p in broken)
    )


def _brief(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
