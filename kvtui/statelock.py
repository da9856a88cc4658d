"""One kvtui at a time changes the slot book: a lock file in the state directory.

The dashboard and ``kvtui proxy`` keep the slot book in memory and write it back as they work.
A headless command that changed slots beside them would be overwritten by their next write (or
overwrite theirs), so the long-running process holds this lock and the headless commands that
change slots refuse, naming the process that holds it. Reading commands need no lock.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TextIO


class StateLock:
    """An advisory ``flock`` on ``state_dir/kvtui.lock``, released when the process ends."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "kvtui.lock"
        self._file: TextIO | None = None

    def acquire(self, owner: str) -> bool:
        """Take the lock for ``owner`` (e.g. "dashboard"); False when another process has it."""
        if self._file is not None:
            return True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held while locked
        except OSError:
            # No usable state directory: nobody else can hold a lock in it either, and the
            # slot book's own writes report the problem.
            return True
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            return False
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()} {owner}\n")
        fh.flush()
        self._file = fh
        return True

    def holder(self) -> str:
        """Who holds the lock, as written by its holder ("PID what")."""
        try:
            return self.path.read_text(encoding="utf-8").strip() or "another kvtui"
        except OSError:
            return "another kvtui"

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
