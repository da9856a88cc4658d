"""``<state_dir>/turns.jsonl``: one JSON object per routed generation, bounded, private.

Appends are single ``write`` calls on an ``O_APPEND`` descriptor (one line each, so a reader or
a crash never sees a line interleaved with another); the file is mode 0600 (it names the user's
chats and characters, never their text). When it grows past ``max_lines + slack`` lines it is
rewritten atomically with the newest ``max_lines``. The calls block: the ledger runs them in a
worker thread, off the event loop.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path

from kvtui.atomic import write_atomic
from kvtui.warmth.model import TurnRecord

MAX_LINES = 5000
TURNS_FILE = "turns.jsonl"


def turns_path(state_dir: Path) -> Path:
    return state_dir / TURNS_FILE


class TurnLog:
    """The turns log at ``path`` (see the module docstring)."""

    def __init__(self, path: Path, *, max_lines: int = MAX_LINES, slack: int | None = None) -> None:
        self.path = path
        self.max_lines = max(1, max_lines)
        self.slack = slack if slack is not None else max(1, self.max_lines // 10)
        self._lines: int | None = None
        self._lock = threading.Lock()

    def _count(self) -> int:
        try:
            with self.path.open("rb") as fh:
                return sum(1 for _ in fh)
        except OSError:
            return 0

    def append(self, records: Iterable[TurnRecord]) -> None:
        """Append records (one line each); trim when the file has grown too long."""
        payload = "".join(
            json.dumps(r.to_json(), ensure_ascii=False, separators=(",", ":")) + "\n"
            for r in records
        ).encode("utf-8")
        if not payload:
            return
        with self._lock:
            if self._lines is None:
                self._lines = self._count()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)
            self._lines += payload.count(b"\n")
            if self._lines > self.max_lines + self.slack:
                self._trim()

    def _trim(self) -> None:
        try:
            lines = self.path.read_bytes().splitlines(keepends=True)
        except OSError:
            return
        kept = lines[-self.max_lines :]
        write_atomic(self.path, b"".join(kept))
        with contextlib.suppress(OSError):
            os.chmod(self.path, 0o600)
        self._lines = len(kept)

    def read(self) -> list[TurnRecord]:
        """Every readable record, oldest first; damaged or foreign lines are skipped."""
        try:
            raw = self.path.read_bytes()
        except OSError:
            return []
        records: list[TurnRecord] = []
        for line in raw.splitlines():
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                record = TurnRecord.from_json(data)
                if record is not None:
                    records.append(record)
        return records
