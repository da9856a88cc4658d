"""The last prompt each character was sent in each chat, kept privately on disk.

The proxy records every generation request it routes; prewarm later replays a character's last
prompt to rebuild its cache without SillyTavern. Prompts are private (they hold the user's
roleplay), so the directory is ``0700``, each file ``0600``, and every write is atomic (a temp
file in the same directory, then a rename) so a reader never sees half a prompt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvtui.atomic import write_atomic


@dataclass(frozen=True)
class RecordedPrompt:
    """One recorded request: the prompt text and the rest of the body it came with."""

    chat: str
    character: str
    prompt: str
    body: dict[str, Any]
    recorded_at: datetime


class PromptRecorder:
    """Stores the last prompt per (chat, character) in ``directory`` (settings.prompts_dir)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, chat: str, character: str) -> Path:
        # Names are arbitrary Unicode and may collide once normalised; a digest never does.
        key = hashlib.sha256(f"{chat}\0{character}".encode()).hexdigest()[:32]
        return self.directory / f"{key}.json"

    def record(self, chat: str, character: str, prompt: str, body: dict[str, Any]) -> Path:
        """Replace the recorded prompt of ``character`` in ``chat``; returns the file written."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(OSError):
            os.chmod(self.directory, 0o700)
        rest = {k: v for k, v in body.items() if k != "prompt"}
        data = {
            "chat": chat,
            "character": character,
            "prompt": prompt,
            "body": rest,
            "recorded_at": datetime.now(UTC).isoformat(),
        }
        target = self._path(chat, character)
        # The temporary file is created with mode 0600 before anything is written into it.
        return write_atomic(target, json.dumps(data, ensure_ascii=False))

    def last_request(self, chat: str, character: str) -> RecordedPrompt | None:
        """The recorded prompt with its body, or ``None`` when nothing (readable) is recorded."""
        path = self._path(chat, character)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("chat") != chat:
            return None
        if data.get("character") != character or not isinstance(data.get("prompt"), str):
            return None
        body = data.get("body")
        try:
            when = datetime.fromisoformat(str(data.get("recorded_at")))
        except ValueError:
            when = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        return RecordedPrompt(
            chat=chat,
            character=character,
            prompt=data["prompt"],
            body=body if isinstance(body, dict) else {},
            recorded_at=when,
        )

    def last(self, chat: str, character: str) -> str | None:
        """The last prompt ``character`` was sent in ``chat``, or ``None``."""
        recorded = self.last_request(chat, character)
        return recorded.prompt if recorded else None
