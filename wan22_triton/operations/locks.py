"""Locks shared by the model processes of one repository (fcntl on files in this user's private folder, one per
purpose).

Purposes: "generation" (low-memory orchestrators, wan22_triton.memory.offload), "replica-R-slot-K" (the replica a
generation runs on, wan22_triton.parallel.plan.ReplicaSlots), "gpu-staging" (random benchmark weights
built on the GPU one model at a time) and "first-call-<device>" (base.ComponentModel: the first call at a new
shape, a warm-up sample or a compile, runs one model at a time on a device). The kernel drops a lock whose
holder dies, so a dead process never blocks the others.

The folder (`private_dir`) is this user's alone (0700, checked): in the shared temp folder another local user could
create a lock file first, or hold it, and so stop the models or their watchdog.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable


def repository_key(model_repository: str | Path) -> str:
    """One key per model repository (the parent of a model's own folder), for its lock files."""
    root = Path(model_repository).resolve().parent
    return hashlib.sha1(str(root).encode()).hexdigest()[:12]


def private_dir() -> Path:
    """This user's folder for locks: $XDG_RUNTIME_DIR/wan22-triton, else wan22-triton-<uid> in the temp folder;
    created 0700. PermissionError, one line, when it exists but is not a private folder of this user."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    path = Path(runtime, "wan22-triton") if runtime else Path(tempfile.gettempdir(), f"wan22-triton-{os.getuid()}")
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{path} must be a folder of this user that no one else can open (mode 0700); "
                              "it is not: remove it, and it is made again")
    return path


def lock_path(model_repository: str | Path, purpose: str) -> Path:
    return private_dir() / f"{repository_key(model_repository)}-{purpose}.lock"


class InterProcessLock:
    """An exclusive fcntl lock on a file; waits by polling so the caller can give up (cancellation)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, should_stop: Callable[[], bool] | None = None, poll_s: float = 0.05) -> float:
        """Blocks until held; returns the seconds waited. `should_stop()` true -> RuntimeError, or whatever it
        raises itself (nothing is held then)."""
        t0 = time.perf_counter()
        while not self.try_acquire():
            if should_stop is not None and should_stop():
                raise RuntimeError("stopped while waiting for the lock")
            time.sleep(poll_s)
        return time.perf_counter() - t0

    def try_acquire(self) -> bool:
        """Holds the lock if it is free now; never waits."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "InterProcessLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
