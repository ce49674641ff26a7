"""Durable files: atomic writes, torn-line-tolerant JSONL, checksummed checkpoints."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile  # torch is imported where checkpoints are handled: `plugins new` needs no torch
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jadekit.errors import RunDirError, brief, first_line


def file_in_the_way(path: Path) -> Path | None:
    """`path`, or the nearest of its parents, when it exists and is not a directory."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None


def refuse_file_as_output_dir(path: Path, option: str, hint: str) -> None:
    """Refuse an output directory that is a file (or lies under one) before anything is computed or written.

    Raises:
        RunDirError: naming `option` (e.g. `--out`), what is wrong and `hint` (where else to write).
    """
    if file_in_the_way(Path(path)) is not None:
        raise output_dir_error(path, option, hint)


def output_dir_error(path: Path, option: str, hint: str, e: OSError | None = None) -> RunDirError:
    """The error for an output directory that cannot be written: a file in the way, or not writable (`e`)."""
    path = Path(path)
    blocker = file_in_the_way(path)
    if blocker == path:
        what = "is a file, not a directory"
    elif blocker is not None:
        what = f"cannot be created: {blocker} is a file, not a directory"
    else:
        reason = (e.strerror or str(e)) if e is not None else "permission denied"
        where = f" at {e.filename}" if e is not None and e.filename and Path(e.filename) != path else ""
        what = f"is not writable ({reason}{where})"
    return RunDirError(f"{option} {path} {what}", hint=hint)


def touches(e: OSError, path: Path) -> bool:
    """Whether the failed operation `e` was on `path`, inside it, or on one of its parents (creating it)."""
    path = Path(path).absolute()
    for name in (e.filename, getattr(e, "filename2", None)):
        if not name:
            continue
        p = Path(os.fsdecode(name)).absolute()
        if p == path or p.is_relative_to(path) or path.is_relative_to(p):
            return True
    return False


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via temp file + fsync + rename: a crash leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file's object, or {} when it is missing, unreadable, damaged or not an object."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return {}
    return content if isinstance(content, dict) else {}


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it (a crash can only tear the last line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> tuple[int, int]:
    """Atomically rewrite a JSONL file with only the records `keep` accepts (unparseable lines dropped).

    Used on resume so that records written after the checkpoint (which will be produced again)
    appear exactly once. Returns the number of records dropped, and of unparseable lines other than a torn
    last one (a crash mid-append tears only the last line: any other is damage, and its record is lost).
    """
    path = Path(path)
    if not path.exists():
        return 0, 0
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    parsed = [_parsed(line) for line in lines]
    records = [r for r in parsed if r is not None]
    damaged = sum(r is None for r in parsed[:-1])
    kept = [r for r in records if keep(r)]
    text = "".join(json.dumps(r, default=str) + "\n" for r in kept)
    if text.encode("utf-8") != path.read_bytes():
        atomic_write_text(path, text)
    return len(records) - len(kept), damaged


def _parsed(line: str) -> dict[str, Any] | None:
    """The record on one JSONL line, or None when the line is not a JSON object (torn or damaged)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSONL file, skipping a torn (unparseable) line."""
    if not Path(path).exists():
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip() and (record := _parsed(line)) is not None:
                yield record


def _digest(obj: Any, h: hashlib._Hash | None = None) -> hashlib._Hash:
    """Deterministic SHA-256 over a nested structure of tensors and plain values."""
    import torch

    h = h or hashlib.sha256()
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(f"K{k!s}".encode())
            _digest(obj[k], h)
    elif isinstance(obj, list | tuple):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _digest(v, h)
    else:
        h.update(f"V{obj!r}".encode())
    return h


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save `state` (tensors and plain values only) with an embedded checksum, atomically.

    The previous checkpoint is kept as `<name>.prev` so a damaged newest file can fall back.
    """
    import torch

    path = Path(path)
    buf = io.BytesIO()
    torch.save({"state": state, "sha256": _digest(state).hexdigest()}, buf)
    if path.exists():
        os.replace(path, path.with_suffix(path.suffix + ".prev"))
    atomic_write_bytes(path, buf.getvalue())


def _load_one(path: Path) -> dict[str, Any]:
    import torch

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as e:
        detail = brief(first_line(e, 100_000), 200)  # torch's first line can run on: cut at a sentence or word
        raise RunDirError(f"checkpoint {path} is unreadable (truncated or corrupt: {type(e).__name__}: {detail})") from None
    if not isinstance(blob, dict) or "state" not in blob or "sha256" not in blob:
        raise RunDirError(f"checkpoint {path} is not a jadekit checkpoint")
    if _digest(blob["state"]).hexdigest() != blob["sha256"]:
        raise RunDirError(f"checkpoint {path} fails its checksum (the file is corrupt)")
    return blob["state"]


def load_checkpoint(path: Path) -> tuple[dict[str, Any], list[str]]:
    """Load a checkpoint, falling back to `<name>.prev` when the newest is damaged.

    Returns:
        The state and the problems met on the way (empty when the newest file was good).

    Raises:
        RunDirError: neither the checkpoint nor its predecessor is usable.
    """
    path = Path(path)
    problems = []
    for candidate in (path, path.with_suffix(path.suffix + ".prev")):
        if not candidate.exists():
            if candidate == path:
                problems.append(f"checkpoint {path} is missing")
            continue
        try:
            return _load_one(candidate), problems
        except RunDirError as e:
            problems.append(e.message)
    if problems == [f"checkpoint {path} is missing"]:
        raise RunDirError(f"no checkpoint at {path}", hint="train first with `jadekit run RECIPE`.")
    raise RunDirError("; ".join(problems), hint="delete the run directory and train again.")
