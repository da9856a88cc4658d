"""One kvtui at a time changes the slot book: a lock file in the state directory.

The dashboard and ``kvtui proxy`` keep the slot book in memory and write it back as they work.
A headless command that changed slots beside them would be overwritten by their next write (or
overwrite theirs), so the long-running process holds this lock and the headless commands that
change slots refuse, naming the process that holds it. Reading commands need no lock.

The lock is ``filelock``'s (``flock`` on POSIX, ``msvcrt`` on Windows), so the dashboard starts
on every platform SillyTavern users run. The holder's name is kept in a file beside the lock
(a locked file cannot be read on Windows). Both files are ``0600`` and the state directory
``0700``: they name the user's processes, and the directory holds the user's prompts.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from filelock import FileLock, Timeout

from kvtui.atomic import private_dir, write_atomic


class StateLock:
    """An advisory lock on ``state_dir/kvtui.lock``, released when the process ends."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "kvtui.lock"
        self.owner_path = state_dir / "kvtui.lock.owner"
        self._lock: FileLock | None = None

    def acquire(self, owner: str) -> bool:
        """Take the lock for ``owner`` (e.g. "dashboard"); False when another process has it."""
        if self._lock is not None:
            return True
        try:
            private_dir(self.path.parent)
        except OSError:
            # No usable state directory: nobody else can hold a lock in it either, and the
            # slot book's own writes report the problem.
            return True
        lock = FileLock(self.path, timeout=0, mode=0o600, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            return False
        except OSError:
            return True  # the directory refuses files: as above
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)
        with contextlib.suppress(OSError):
            write_atomic(self.owner_path, f"{os.getpid()} {owner}\n")
        self._lock = lock
        return True

    def holder(self) -> str:
        """Who holds the lock, as written by its holder ("PID what")."""
        try:
            return self.owner_path.read_text(encoding="utf-8").strip() or "another kvtui"
        except OSError:
            return "another kvtui"

    def release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                self.owner_path.unlink()
            self._lock.release()
            self._lock = None
