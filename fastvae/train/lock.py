"""An exclusive lock on a run folder, so that two trainings never write into the same one.

The lock is an advisory ``flock`` on ``<run>/.lock``, held for as long as the training runs. The
operating system drops it when the holder exits in any way (a crash or ``kill -9`` included), so
a stale lock never needs cleaning up by hand. The file holds the holder's host, pid and start
time, which the refusal message quotes. POSIX only (``fcntl``); on network file systems without
``flock`` support the lock may not exclude processes on other hosts.
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from pathlib import Path

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """The run folder is in use by another training (the message names it and its holder)."""


class RunLock:
    """``with RunLock(folder):`` holds the folder's lock; raises :class:`RunLockedError` at
    entry if another process holds it (never waits)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "unknown"
            os.close(fd)
            raise RunLockedError(
                f"run folder {self.folder} is in use by another training ({holder}); wait for "
                "it to finish, or choose another --out"
            ) from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {started}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
