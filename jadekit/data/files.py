"""File helpers shared by the dataset adapters: find, fetch and decompress data files."""

from __future__ import annotations

import bz2
import errno
import gzip
import hashlib
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from jadekit.errors import DataError, MissingFilesError

_ROOT_WAYS = ('`root = "..."` in the recipe\'s [primary] or [auxiliary] table or `--set primary.root=...`; '
              'else the environment variable JADEKIT_DATA')


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
        message += f"\n  downloading {dataset} failed: {cause}"  # its downloader may fetch every split's files
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

    The download goes to a staging folder in the data root (`.jadekit-download-*`), and only a finished
    download's files are moved into place, one atomic rename each (a copy, then a rename, into a folder on another
    disk): the data root never holds a partial file, and a file already there, in any of its forms (raw or `.gz`),
    is kept. A failed or interrupted download removes its staging folder; one killed outright leaves it, and a later
    download into that root removes it (its owner's lock is free). A user's runs on one machine that need the same
    files download them once: the others wait (and say so on stderr), then read them.

    Raises:
        DataError: files are missing and `download` is false or the download failed; the data root cannot be
            written; the download lock cannot be taken.
    """
    found = _first_existing(wanted)
    if all(found) or not download:
        return _all_or_error(dataset, split, wanted, found, root, cause=None)
    with _download_lock(dataset, split, root):
        found = _first_existing(wanted)  # another process may have fetched them while this one waited
        if all(found):
            return found  # type: ignore[return-value]
        created = _absent_folders(root)
        try:
            cause = _download(dataset, split, root, fetch, wanted)
        finally:
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


_STAGING = ".jadekit-download-"


@contextmanager
def _download_lock(dataset: str, split: str, root: Path) -> Iterator[None]:
    """Hold this user's download lock for `root` on this machine, saying so when another process holds it."""
    path = _lock_path(root)
    lock = FileLock(path)
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:
            print(f"waiting for another jadekit process that is downloading into {root} (lock file {path})",
                  file=sys.stderr, flush=True)
            lock.acquire()
    except OSError as e:
        raise DataError(
            f"{dataset} {split} split: cannot take the download lock {path}: {_brief(e)}",
            hint=f"delete {path} if no jadekit download is running, or set TMPDIR to a folder you can write",
        ) from None
    try:
        yield
    finally:
        lock.release()


def _lock_path(root: Path) -> Path:
    """One lock per user, data root and machine, in the temp folder: the data root may be shared."""
    key = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    user = f"{os.getuid()}-" if hasattr(os, "getuid") else ""
    return Path(tempfile.gettempdir()) / f"jadekit-download-{user}{key}.lock"


def _download(
    dataset: str, split: str, root: Path, fetch: Callable[[Path], object], wanted: Sequence[tuple[Path, ...]]
) -> str:
    """Fetch into a fresh staging folder, move what it brought into place and remove the folder; return what to
    say if the files are still missing."""
    staging = _new_staging(dataset, split, root)
    try:
        with FileLock(staging / _OWNER):  # held while the folder is in use: see _remove_abandoned_staging
            try:
                fetch(staging)
            except Exception as e:  # offline, checksum mismatch, server down: all mean "no files"
                return _brief(e)
            _move_new_files(dataset, split, staging, root, wanted)
            return "download finished but the files are still missing"
    finally:  # also on Ctrl-C
        shutil.rmtree(staging, ignore_errors=True)


def _new_staging(dataset: str, split: str, root: Path) -> Path:
    """A fresh staging folder in `root` (created if absent), after removing the ones killed downloads left."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_staging(root)
        return Path(tempfile.mkdtemp(prefix=_STAGING, dir=root))
    except OSError as e:
        raise DataError(
            f"{dataset} {split} split: cannot download into the data root {root}: {_brief(e)}",
            hint=f"make {root} writable, put the files there yourself, or point jadekit at another data root ({_ROOT_WAYS})",
        ) from None


_OWNER = ".owner.lock"  # in a staging folder: locked by the download using it (the lock dies with its process)


def _remove_abandoned_staging(root: Path) -> None:
    """Delete staging folders whose owner lock is free: their download was killed (any process, any user)."""
    for folder in root.glob(f"{_STAGING}*"):
        try:
            if time.time() - folder.stat().st_mtime < 60:
                continue  # just created: its download may not hold its lock yet
            with FileLock(folder / _OWNER, timeout=0):
                shutil.rmtree(folder)
        except OSError:  # held (Timeout is an OSError), another user's, or already gone: not ours to remove
            continue


def _move_new_files(dataset: str, split: str, staging: Path, root: Path, wanted: Sequence[tuple[Path, ...]]) -> None:
    """Move every file the download wrote into its place under `root`, keeping the files already there."""
    forms = {p: alts for alts in wanted for p in alts}
    for path in sorted(p for p in staging.rglob("*") if p.is_file() and p.name != _OWNER):
        target = root / path.relative_to(staging)
        compressed_twin = target.with_suffix("") if target.suffix == ".gz" else target.with_name(f"{target.name}.gz")
        if any(p.exists() or p.is_symlink() for p in (*forms.get(target, (target,)), compressed_twin)):
            continue  # the user's file (in this form or another, or a link to a shared store) stays
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _place(path, target)
        except OSError as e:
            raise DataError(
                f"{dataset} {split} split: downloaded, but cannot write {target}: {_brief(e)}",
                hint=f"make {target.parent} writable, put the files there yourself, or point jadekit at another data "
                     f"root ({_ROOT_WAYS})",
            ) from None


def _place(path: Path, target: Path) -> None:
    """Move `path` to `target` in one atomic step: readers see no file or the whole file."""
    try:
        os.replace(path, target)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        fd, part = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)  # the target's folder is on
        os.close(fd)  # another disk (a linked folder): copy beside the target, then rename there
        try:
            shutil.copyfile(path, part)
            shutil.copymode(path, part)  # mkstemp's 0600 would hide the file from the other users of a shared store
            os.replace(part, target)
        except BaseException:
            Path(part).unlink(missing_ok=True)
            raise


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
    broken = [p for p in paths if p.is_symlink()]  # absent, yet a link: to nothing, or to no file
    return (
        str(paths[0])
        + "".join(f" (or {o})" for o in others)
        + "".join(f" ({p.name} is a link to {p.parent / os.readlink(p)}, which is missing or not a file)" for p in broken)
    )


def _brief(e: BaseException, limit: int = 300) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
