"""Durable files: atomic writes, torn-line-tolerant JSONL, checksummed checkpoints."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from jadekit.errors import RunDirError, first_line


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


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it (a crash can only tear the last line)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_jsonl(path: Path, keep: Callable[[dict[str, Any]], bool]) -> int:
    """Atomically rewrite a JSONL file with only the records `keep` accepts (torn lines dropped).

    Used on resume so that records written after the checkpoint (which will be produced again)
    appear exactly once. Returns the number of records dropped.
    """
    path = Path(path)
    if not path.exists():
        return 0
    records = list(read_jsonl(path))
    kept = [r for r in records if keep(r)]
    text = "".join(json.dumps(r, default=str) + "\n" for r in kept)
    if text.encode("utf-8") != path.read_bytes():
        atomic_write_text(path, text)
    return len(records) - len(kept)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the records of a JSONL file, skipping a torn (unparseable) line."""
    if not Path(path).exists():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def _digest(obj: Any, h: hashlib._Hash | None = None) -> hashlib._Hash:
    """Deterministic SHA-256 over a nested structure of tensors and plain values."""
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
    path = Path(path)
    buf = io.BytesIO()
    torch.save({"state": state, "sha256": _digest(state).hexdigest()}, buf)
    if path.exists():
        os.replace(path, path.with_suffix(path.suffix + ".prev"))
    atomic_write_bytes(path, buf.getvalue())


def _load_one(path: Path) -> dict[str, Any]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles code
    except Exception as e:
        brief = first_line(e, 200)
        raise RunDirError(f"checkpoint {path} is unreadable (truncated or corrupt: {type(e).__name__}: {brief})") from None
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
