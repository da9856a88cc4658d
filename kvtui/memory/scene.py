"""Scenes: which messages of a SillyTavern chat a memory covers, and kvtui's per-chat progress.

Message numbers are SillyTavern's message ids (the index in the chat file after the header).
A scene skips hidden and system messages (``is_system``). The default range runs from the message
after the chat's last kvtui memory to the newest message; kvtui keeps that progress in its own
state directory (``memory/progress.json``) and never writes chat files. MemoryBooks' progress
(``chat_metadata.STMemoryBooks.highestMemoryProcessed``) is offered as a starting point when kvtui
has none of its own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvtui.atomic import write_atomic
from kvtui.errors import KvtuiError
from kvtui.sillytavern import Chat, Message


class SceneError(KvtuiError, ValueError):
    """A scene that cannot be made; the message says what to change."""


@dataclass(frozen=True)
class SceneLine:
    index: int
    name: str
    text: str
    is_user: bool


@dataclass(frozen=True)
class Scene:
    """The visible messages ``start``..``end`` (inclusive) of a chat."""

    chat_id: str
    start: int
    end: int
    lines: tuple[SceneLine, ...]
    user: str
    char: str

    @property
    def range_text(self) -> str:
        return f"{self.start}-{self.end}"

    def transcript(self) -> list[str]:
        """One ``Name: message`` line per message (narrator lines without a name)."""
        return [f"{line.name}: {line.text}" if line.name else line.text for line in self.lines]


def parse_range(text: str) -> tuple[int, int | None]:
    """``X-Y``, ``X-`` (to the newest) or ``X`` (one message); raises ``SceneError``."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:(-)\s*(\d*)\s*)?", text or "")
    if not match:
        raise SceneError(f"{text!r} is not a message range: write X-Y, X- or X (e.g. 12-40).")
    start = int(match.group(1))
    if match.group(2) is None:
        return start, start
    end = int(match.group(3)) if match.group(3) else None
    if end is not None and end < start:
        raise SceneError(f"The range {text} ends before it starts.")
    return start, end


def _speaker(message: Message) -> str:
    return "" if message.is_narrator else (message.name or "Unknown")


def chat_names(chat: Chat, user_fallback: str, char_fallback: str) -> tuple[str, str]:
    """``({{user}}, {{char}})`` of a chat: the last user message's name, the characters' names."""
    user = next((m.name for m in reversed(chat.messages) if m.is_user and m.name), "")
    speakers: list[str] = []
    for m in chat.messages:
        if not m.is_user and not m.is_system and not m.is_narrator and m.name:
            if m.name not in speakers:
                speakers.append(m.name)
    char = ", ".join(speakers) if chat.ref.is_group and speakers else char_fallback
    return user or chat.user_name or user_fallback, char or char_fallback


def stmb_progress(chat: Chat) -> int | None:
    """MemoryBooks' last summarised message id in this chat, when it recorded one."""
    meta = chat.metadata.get("STMemoryBooks")
    value = meta.get("highestMemoryProcessed") if isinstance(meta, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def select_scene(
    chat: Chat,
    start: int,
    end: int | None,
    *,
    user: str,
    char: str,
) -> Scene:
    """The visible messages from ``start`` to ``end`` (the newest when None)."""
    last = len(chat.messages) - 1
    if last < 0:
        raise SceneError(f"The chat {chat.ref.chat_id!r} has no messages.")
    stop = last if end is None else end
    if start > last:
        raise SceneError(
            f"The chat has messages 0-{last}; there is nothing from message {start} on."
        )
    stop = min(stop, last)
    lines = tuple(
        SceneLine(i, _speaker(m), m.mes.strip(), m.is_user)
        for i, m in enumerate(chat.messages)
        if start <= i <= stop and not m.is_system and m.mes.strip()
    )
    if not lines:
        raise SceneError(f"Messages {start}-{stop} are all hidden or empty: pick another range.")
    return Scene(chat.ref.chat_id, lines[0].index, lines[-1].index, lines, user, char)


class ProgressStore:
    """kvtui's per-chat memory progress: the last message a kvtui memory covered."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def last_end(self, chat_id: str) -> int | None:
        record = self._read().get(chat_id)
        value = record.get("end") if isinstance(record, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def record(self, chat_id: str, start: int, end: int) -> None:
        data = self._read()
        previous = self.last_end(chat_id)
        data[chat_id] = {
            "start": start,
            "end": max(end, previous) if previous is not None else end,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        write_atomic(self.path, json.dumps(data, indent=2, ensure_ascii=False))


@dataclass(frozen=True)
class StartPoint:
    """Where the default scene starts and why."""

    start: int
    source: str
    """``kvtui`` (after kvtui's last memory), ``stmb`` (after MemoryBooks' last) or ``start``."""


def default_start(chat: Chat, progress: ProgressStore) -> StartPoint:
    mine = progress.last_end(chat.ref.chat_id)
    if mine is not None:
        return StartPoint(mine + 1, "kvtui")
    theirs = stmb_progress(chat)
    if theirs is not None:
        return StartPoint(theirs + 1, "stmb")
    return StartPoint(0, "start")


def visible_since(chat: Chat, after: int | None) -> int:
    """Visible (non-system) messages after message ``after`` (all of them for None): what an
    interval trigger counts against its threshold."""
    start = -1 if after is None else after
    return sum(1 for i, m in enumerate(chat.messages) if i > start and not m.is_system)
