"""The one-writer lock of a run directory: an OS lock (flock) on RUN_DIR/.lock, and who holds it.

The writer takes it before it writes anything and the OS lets go of it when the writer ends, however
it ends. It records who holds it (pid, host, since, command) as JSON in the file, so a refused
writer can be told whom it waits for. Readers never take it: ``lock_held`` tells whether a writer
holds it by looking, not by locking.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
import weakref
from pathlib import Path

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another process (or another trainer in this one) is writing the run directory."""


class RunLock:
    """The writer lock of the run directory ``run_dir`` (which must exist when it is taken)."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (released when this process ends or on ``release``). Raises
        RunLockedError naming the holder when another writer has it."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"{self.path.parent} is being written by {holder(self.path)}: one process writes a "
                "run at a time. Wait for it to finish or stop it (a stopped run saves itself and can "
                "be resumed); to read the run meanwhile, use workbench eval/report or a widget"
            ) from None
        os.ftruncate(fd, 0)
        os.write(
            fd,
            json.dumps(
                {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": time.time(),
                    "command": " ".join(sys.argv)[:300],
                }
            ).encode(),
        )
        self._fd = fd
        self._release = weakref.finalize(self, os.close, fd)  # a lock dropped without release() lets go too

    def release(self) -> None:
        if self._fd is not None:
            self._release()
            self._fd = None


def holder(lock_path: Path) -> str:
    """Who holds a run's lock, in words, from what the holder wrote into it."""
    try:
        who = json.loads(lock_path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(who["since"]))
        mine = (
            " (this process: close the other Trainer with .close(), or restart the kernel)"
            if who["pid"] == os.getpid() and who["host"] == socket.gethostname()
            else ""
        )
        return f"pid {who['pid']} on {who['host']} since {since}{mine}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def lock_held(run_dir: str | Path) -> bool | None:
    """Whether a writer holds the run's lock now, found without taking it (a reader that took it,
    even for a moment, could make a starting writer fail): from the kernel's table of locks,
    /proc/locks. None when this machine cannot tell: no .lock file (a writer that does not lock),
    a holder on another host (a shared disk), or no /proc/locks (not Linux)."""
    path = Path(run_dir) / LOCK_NAME
    try:
        who = json.loads(path.read_text())
        inode = path.stat().st_ino
        with open("/proc/locks", encoding="ascii", errors="replace") as table:
            lines = table.read().splitlines()
    except (OSError, ValueError):  # missing, or its holder is writing who it is right now
        return None
    if not isinstance(who, dict) or who.get("host") != socket.gethostname():
        return None
    # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:2540265 0 EOF": the device is compared by inode only,
    # since an overlay file system names a different device here than stat() does
    for line in lines:
        fields = line.split()
        if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
            return True
    return False
