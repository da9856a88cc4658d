"""What recall remembers between requests, and its JSON file (``<state_dir>/recall.json``).

Per (chat, character): the cached recall (its key, text and memory ids), the round counter and the
sticky records after and before the cached round (so a recomputed round — an edited message —
starts from the same sticky state as the round it replaces). Per chat: the frozen long-term
block. The file is written atomically and bounded to the most recently used entries; a damaged
file is set aside as ``recall.json.bad`` and recall starts afresh (nothing else depends on it).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvtui.recall.history import RecallKey
from kvtui.recall.pins import Pin
from kvtui.recall.select import Sticky

MAX_CHARACTERS = 500
MAX_CHATS = 200
VERSION = 1


@dataclass
class CharacterRecall:
    """The recall cached for one (chat, character)."""

    round: int = 0
    key: RecallKey | None = None
    text: str = ""
    ids: tuple[str, ...] = ()
    sticky: dict[str, Sticky] = field(default_factory=dict)
    sticky_before: dict[str, Sticky] = field(default_factory=dict)
    stale: str | None = None  # why the cached recall may no longer hold (a reported event)
    last_injected: str | None = None
    pins: tuple[Pin, ...] = ()  # earlier turns' recall kept in the prompt (keep_in_history)

    def to_json(self) -> dict[str, Any]:
        return {
            "pins": [pin.to_json() for pin in self.pins],
            "round": self.round,
            "key": self.key.to_json() if self.key else None,
            "text": self.text,
            "ids": list(self.ids),
            "sticky": _sticky_json(self.sticky),
            "sticky_before": _sticky_json(self.sticky_before),
            "stale": self.stale,
            "last_injected": self.last_injected,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CharacterRecall:
        key = data.get("key")
        stale, last = data.get("stale"), data.get("last_injected")
        return cls(
            round=int(data.get("round", 0)),
            key=RecallKey.from_json(key) if isinstance(key, Mapping) else None,
            text=str(data.get("text", "")),
            ids=tuple(str(i) for i in data.get("ids", [])),
            sticky=_sticky_from(data.get("sticky")),
            sticky_before=_sticky_from(data.get("sticky_before")),
            stale=str(stale) if stale else None,
            last_injected=str(last) if isinstance(last, str) else None,
            pins=tuple(
                pin
                for raw in data.get("pins") or []
                if isinstance(raw, Mapping) and (pin := Pin.from_json(raw)) is not None
            ),
        )


@dataclass
class LongTerm:
    """A chat's frozen long-term block."""

    batch: int = 0
    ids: tuple[str, ...] = ()  # memories in the block
    seen: tuple[str, ...] = ()  # every memory that existed when it was frozen
    text: str = ""
    last_injected: dict[str, str] = field(default_factory=dict)  # per character

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "ids": list(self.ids),
            "seen": list(self.seen),
            "text": self.text,
            "last_injected": dict(self.last_injected),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LongTerm:
        last = data.get("last_injected")
        return cls(
            batch=int(data.get("batch", 0)),
            ids=tuple(str(i) for i in data.get("ids", [])),
            seen=tuple(str(i) for i in data.get("seen", [])),
            text=str(data.get("text", "")),
            last_injected={str(k): str(v) for k, v in last.items()}
            if isinstance(last, Mapping)
            else {},
        )


def _sticky_json(sticky: Mapping[str, Sticky]) -> dict[str, list[int]]:
    return {k: [v.last_round, v.consecutive] for k, v in sorted(sticky.items())}


def _sticky_from(data: object) -> dict[str, Sticky]:
    if not isinstance(data, Mapping):
        return {}
    return {
        str(k): Sticky(int(v[0]), int(v[1]))
        for k, v in data.items()
        if isinstance(v, list) and len(v) == 2
    }


_SEP = "\x1f"


@dataclass
class RecallState:
    characters: dict[tuple[str, str], CharacterRecall] = field(default_factory=dict)
    longterm: dict[str, LongTerm] = field(default_factory=dict)

    def character(self, chat: str, character: str) -> CharacterRecall | None:
        found = self.characters.pop((chat, character), None)
        if found is not None:
            self.characters[(chat, character)] = found  # most recently used last
        return found

    def put(self, chat: str, character: str, value: CharacterRecall) -> None:
        self.characters.pop((chat, character), None)
        self.characters[(chat, character)] = value
        while len(self.characters) > MAX_CHARACTERS:
            del self.characters[next(iter(self.characters))]

    def chat_longterm(self, chat: str) -> LongTerm | None:
        found = self.longterm.pop(chat, None)
        if found is not None:
            self.longterm[chat] = found
        return found

    def put_longterm(self, chat: str, value: LongTerm) -> None:
        self.longterm.pop(chat, None)
        self.longterm[chat] = value
        while len(self.longterm) > MAX_CHATS:
            del self.longterm[next(iter(self.longterm))]

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "characters": {
                f"{chat}{_SEP}{character}": value.to_json()
                for (chat, character), value in self.characters.items()
            },
            "longterm": {chat: value.to_json() for chat, value in self.longterm.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecallState:
        state = cls()
        chars = data.get("characters")
        if isinstance(chars, Mapping):
            for joined, value in chars.items():
                chat, _, character = str(joined).partition(_SEP)
                if isinstance(value, Mapping):
                    state.characters[(chat, character)] = CharacterRecall.from_json(value)
        longterm = data.get("longterm")
        if isinstance(longterm, Mapping):
            for chat, value in longterm.items():
                if isinstance(value, Mapping):
                    state.longterm[str(chat)] = LongTerm.from_json(value)
        return state


def load_state(path: Path | None) -> tuple[RecallState, str | None]:
    """The saved state (empty when there is none); a message when a damaged file was set aside."""
    if path is None:
        return RecallState(), None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, Mapping):
            raise ValueError("not a JSON object")
        return RecallState.from_json(data), None
    except FileNotFoundError:
        return RecallState(), None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError) as err:
        with contextlib.suppress(OSError):
            os.replace(path, path.with_name(path.name + ".bad"))
        return RecallState(), (
            f"Recall state {path} was unreadable ({err}); set aside as {path.name}.bad, "
            "recall starts afresh."
        )
