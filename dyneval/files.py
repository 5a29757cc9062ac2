"""Files: atomic writes for every result, checkpoint, shard and table; run-folder locks; file hashes.

A write lands under a temporary name beside its target, unique to the writer (process id and a
counter), and is renamed over it only once complete, so an interrupted run never leaves a
half-written file where a finished one is expected, and two writers never share a half-written file.
A run folder is locked (`lock_folder`) by the one process that writes into it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".dyneval.lock"
DISK_FULL_BYTES = 1 << 20  # after a failed write, less free space than this means the disk filled up
_counter = itertools.count()


class DiskFullError(OSError):
    """A write failed for lack of space (torch.save reports it without saying so)."""


def _disk_full(error: BaseException, folder: Path) -> bool:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    try:  # torch.save to a full disk raises "unexpected pos 704 vs 598" with the ENOSPC swallowed
        return shutil.disk_usage(folder).free < DISK_FULL_BYTES
    except OSError:
        return False


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb"):
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{next(_counter)}.tmp")
    try:
        with open(tmp, mode.replace("w", "x")) as f:
            yield f
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if _disk_full(e, path.parent):
            raise DiskFullError(f"disk full: could not write {path}") from None
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: str | Path, obj, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def output_folder(path: str | Path) -> Path:
    """Create `path` (an --out folder) if needed; refuse a file or a folder this process cannot write."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path}: exists and is not a folder: give --out a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (PermissionError, OSError) as e:
        raise ValueError(f"{path}: cannot create the output folder ({e.strerror})") from None
    probe = path / f".write-test.{os.getpid()}"
    try:
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{path}: the output folder is not writable ({e.strerror})") from None
    return path


@contextmanager
def lock_folder(folder: str | Path):
    """Hold an exclusive lock on `folder` (flock on its `.dyneval.lock`); refuse if another process holds it."""
    folder = output_folder(folder)
    f = open(folder / LOCK_NAME, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise ValueError(f"{folder}: another dyneval process is writing into this folder "
                         f"(it holds {LOCK_NAME}): wait for it to end, or choose another --out") from None
    try:
        yield folder
    finally:
        f.close()


def read_json(path: Path) -> dict:
    """A JSON object from `path`; a truncated or non-object file is a one-line error naming it."""
    try:
        obj = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}): a truncated or damaged file; rerun the stage that "
                         f"writes it") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj
