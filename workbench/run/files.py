"""Writing files that readers and other writers may open at the same moment.

``atomic_write_text`` puts a whole new file in place by a rename from a temporary named for this
process and thread, so a reader sees the old file or the new one and two writers never share a
temporary. ``update_json`` is a read-modify-write of a JSON file that several processes may make at
once (eval.json, trials.json, study.json): an OS lock on ``.NAME.lock`` beside it is held from the
read to the rename, so no writer's change is lost. Readers take no lock: the rename is atomic.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """``text`` as the whole of ``path``, replaced in one rename (on disk before it is named)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        tmp.write_text(text)
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, value) -> None:
    """``value`` as JSON at ``path``, atomically (a reader sees the old file or the new one)."""
    atomic_write_text(path, json.dumps(value, indent=2, default=str) + "\n")


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the OS lock of ``path`` (on ``.NAME.lock`` beside it, waiting for another holder) while the block runs."""
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing lets go of the lock


def update_json(path: Path, change: Callable[[dict], dict], read: Callable[[Path], dict]) -> dict:
    """Read ``path`` (with ``read``), apply ``change`` and write the result, all under ``path``'s lock,
    so that concurrent writers (other processes, other threads) each see the others' changes."""
    with locked(path):
        value = change(read(path))
        write_json(path, value)
        return value
