"""Per-template, per-chat checkpoints: the last message a side prompt has seen.

Kept in kvtui's state directory (``sideprompts/checkpoints.json``: ``{chat: {template key:
{"last": id, "at": iso}}}``); chat files are never written. Without a checkpoint the baseline is
the chat's memory progress (kvtui's, else MemoryBooks'), else before the first message.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvtui.atomic import write_atomic


class CheckpointStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, chat_id: str, key: str) -> int | None:
        chat = self._read().get(chat_id)
        record = chat.get(key) if isinstance(chat, dict) else None
        value = record.get("last") if isinstance(record, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def set(self, chat_id: str, key: str, last: int) -> None:
        with self._lock:
            data = self._read()
            chat = data.get(chat_id)
            if not isinstance(chat, dict):
                chat = data[chat_id] = {}
            chat[key] = {"last": last, "at": datetime.now(UTC).isoformat(timespec="seconds")}
            write_atomic(self.path, json.dumps(data, indent=2, ensure_ascii=False))
