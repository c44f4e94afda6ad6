"""Exclusive folder locks: one training per run folder, one export per bundle folder.

An advisory ``flock`` on a small lock file that holds the owner's PID. The kernel drops the lock when its
process dies (kill -9 included), so a stale lock never needs cleaning by hand; the file itself stays.
Where ``fcntl`` does not exist (Windows) locking is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ApdError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"


class RunLock:
    """``RunLock(folder).acquire()`` or ``with RunLock(folder):``; ``lock_file`` defaults to ``folder/.lock``."""

    def __init__(self, folder: str | Path, what: str = "run folder", lock_file: str | Path | None = None,
                 hint: str = "") -> None:
        self.folder = Path(folder)
        self.path = Path(lock_file) if lock_file is not None else self.folder / LOCK_NAME
        self.what = what
        self.hint = hint
        self._fd: int | None = None

    def holder(self) -> str:
        try:
            pid = self.path.read_text().strip()
        except OSError:
            pid = ""
        return pid if pid.isdigit() else "unknown"

    def try_acquire(self) -> bool:
        """Take the lock if it is free; False when another process (or another handle here) holds it."""
        if self._fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def acquire(self) -> "RunLock":
        if not self.try_acquire():
            raise ApdError(f"{self.what} {self.folder} is in use by another apd-edge process (PID {self.holder()}); "
                           f"wait for it to finish or stop it{self.hint}")
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
