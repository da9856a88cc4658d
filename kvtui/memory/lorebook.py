"""SillyTavern World Info files that kvtui owns: memory entries and, later, side-prompt trackers.

The file format is SillyTavern's (``worlds/<name>.json`` = ``{"entries": {"<uid>": entry}}``);
every entry kvtui writes carries all fields of SillyTavern's new-entry template with their
defaults (``ENTRY_TEMPLATE``, from ``world-info.js`` ``newWorldInfoEntryDefinition``), the lowest
free uid, and kvtui's marker ``"kvtui": true`` plus ``kvtui_kind``, ``kvtui_chat``,
``kvtui_start``/``kvtui_end`` (the scene's message range) and, for memories, ``kvtui_number``.

Ownership: kvtui creates a book with a top-level ``"kvtui": {"owner": "kvtui", "chat": …}``
object and writes only books that carry it; inside, it changes only entries marked ``"kvtui":
true`` — entries a user adds in SillyTavern are kept verbatim. Every change re-reads the file and
replaces it atomically. :meth:`Lorebook.upsert_by_title` finds an entry by its title and replaces
its content in place (side prompts use it). The entry format (template, placement, titles, book
names) is :mod:`kvtui.memory.worldinfo`, re-exported here.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvtui.atomic import write_atomic
from kvtui.errors import KvtuiError
from kvtui.memory.contract import Memory
from kvtui.memory.worldinfo import (
    ENTRY_TEMPLATE,
    EntrySettings,
    binding_hint,
    book_file_name,
    book_name,
    format_title,
    worlds_dir,
)

__all__ = [
    "ENTRY_TEMPLATE",
    "MAX_UID",
    "MEMORY",
    "BookError",
    "EntrySettings",
    "Lorebook",
    "StoredMemory",
    "binding_hint",
    "book_file_name",
    "book_name",
    "format_title",
    "worlds_dir",
]

MAX_UID = 1_000_000
MEMORY = "memory"


class BookError(KvtuiError):
    """A lorebook kvtui may not or cannot write; the message says what to do."""


@dataclass(frozen=True)
class StoredMemory:
    """A memory entry kvtui wrote, as read back from the book."""

    uid: int
    number: int
    title: str
    """The entry's title (``comment``), as formatted."""
    memory: Memory
    start: int | None
    end: int | None


class Lorebook:
    """One World Info file kvtui owns (read on open, re-read and replaced on every change)."""

    def __init__(self, path: Path, chat: str, data: dict[str, Any]) -> None:
        self.path = path
        self.chat = chat
        self.data = data

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, chat: str) -> Lorebook:
        """The book at ``path`` (an empty new one when it does not exist yet).

        Raises ``BookError`` for a file kvtui did not create, or one that is not World Info.
        """
        return cls(path, chat, cls._read(path, chat))

    @staticmethod
    def _read(path: Path, chat: str) -> dict[str, Any]:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return {"entries": {}, "kvtui": {"owner": "kvtui", "chat": chat, "version": 1}}
        except OSError as err:
            raise BookError(f"Cannot read the lorebook {path}: {err}") from err
        try:
            data = json.loads(raw.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as err:
            raise BookError(
                f"{path} is not valid JSON ({err}); kvtui leaves it alone. Move it away or set "
                "another memory_book_name."
            ) from err
        marker = data.get("kvtui") if isinstance(data, dict) else None
        if not isinstance(marker, dict) or marker.get("owner") != "kvtui":
            raise BookError(
                f"{path.name} is a lorebook kvtui did not create, so kvtui does not write it. "
                "Set another memory_book_name."
            )
        book: dict[str, Any] = data
        if not isinstance(book.get("entries"), dict):
            book["entries"] = {}
        return book

    def reload(self) -> None:
        self.data = self._read(self.path, self.chat)

    @property
    def entries(self) -> dict[str, Any]:
        entries: dict[str, Any] = self.data["entries"]
        return entries

    # -- reading ------------------------------------------------------------------------------

    def owned_entries(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Entries kvtui wrote (of ``kind`` when given), by uid."""
        found = [
            e
            for e in self.entries.values()
            if isinstance(e, dict)
            and e.get("kvtui") is True
            and (kind is None or e.get("kvtui_kind") == kind)
        ]
        return sorted(found, key=lambda e: _int(e.get("uid")) or 0)

    def memories(self) -> list[StoredMemory]:
        """kvtui's memory entries, oldest (lowest number) first."""
        out = []
        for e in self.owned_entries(MEMORY):
            keys = e.get("key")
            memory = Memory(
                str(e.get("kvtui_title") or e.get("comment") or ""),
                str(e.get("content") or ""),
                tuple(str(k) for k in keys) if isinstance(keys, list) else (),
            )
            out.append(
                StoredMemory(
                    uid=_int(e.get("uid")) or 0,
                    number=_int(e.get("kvtui_number")) or 0,
                    title=str(e.get("comment") or ""),
                    memory=memory,
                    start=_int(e.get("kvtui_start")),
                    end=_int(e.get("kvtui_end")),
                )
            )
        return sorted(out, key=lambda m: (m.number, m.uid))

    def next_number(self) -> int:
        numbers = [m.number for m in self.memories()]
        return max(numbers, default=0) + 1

    def free_uid(self) -> int:
        used = {_int(k) for k in self.entries} | {
            _int(e.get("uid")) for e in self.entries.values() if isinstance(e, dict)
        }
        for uid in range(MAX_UID):
            if uid not in used:
                return uid
        raise BookError(f"{self.path.name} has no free entry id left.")

    def find_by_title(self, title: str) -> dict[str, Any] | None:
        """The kvtui entry whose title (``comment``) is exactly ``title``."""
        return next((e for e in self.owned_entries() if e.get("comment") == title), None)

    # -- writing ------------------------------------------------------------------------------

    def _new_entry(self, kind: str, scene: tuple[int, int] | None) -> dict[str, Any]:
        uid = self.free_uid()
        entry: dict[str, Any] = {"uid": uid, **copy.deepcopy(ENTRY_TEMPLATE)}
        entry.update(
            addMemo=True,
            displayIndex=uid,
            kvtui=True,
            kvtui_kind=kind,
            kvtui_chat=self.chat,
            kvtui_created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        if scene is not None:
            entry["kvtui_start"], entry["kvtui_end"] = scene
        return entry

    def add_memory(
        self,
        memory: Memory,
        scene: tuple[int, int],
        settings: EntrySettings,
        *,
        title_format: str = "[000] - {{title}}",
        char: str = "",
        user: str = "",
    ) -> StoredMemory:
        """Add ``memory`` as the next numbered entry and write the file."""
        self.reload()
        number = self.next_number()
        entry = self._new_entry(MEMORY, scene)
        title = format_title(
            title_format,
            number,
            memory,
            char=char,
            user=user,
            scene=f"{scene[0]}-{scene[1]}",
            messages=scene[1] - scene[0] + 1,
        )
        entry.update(
            key=list(memory.keywords),
            comment=title,
            content=memory.content,
            displayIndex=number,
            kvtui_number=number,
            kvtui_title=memory.title,
        )
        settings.apply(entry, number)
        self.entries[str(entry["uid"])] = entry
        self.save()
        return StoredMemory(entry["uid"], number, title, memory, scene[0], scene[1])

    def upsert_by_title(
        self,
        title: str,
        content: str,
        settings: EntrySettings,
        *,
        kind: str,
        keys: Sequence[str] = (),
        scene: tuple[int, int] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Replace the content of kvtui's entry titled ``title``, or create it; write the file.

        An existing entry keeps its uid, keys and placement (the user may have tuned them in
        SillyTavern); only ``content``, the scene range and ``extra`` change. A title held by
        an entry kvtui did not write is refused.
        """
        self.reload()
        entry = self.find_by_title(title)
        if entry is None:
            titles = (e.get("comment") for e in self.entries.values() if isinstance(e, dict))
            if title in titles:
                raise BookError(
                    f'{self.path.name} already has an entry titled "{title}" that kvtui did not '
                    "write; rename one of them."
                )
            entry = self._new_entry(kind, scene)
            entry.update(comment=title, key=list(keys))
            settings.apply(entry, None)
            self.entries[str(entry["uid"])] = entry
        entry["content"] = content
        if scene is not None:
            entry["kvtui_start"], entry["kvtui_end"] = scene
        entry["kvtui_updated"] = datetime.now(UTC).isoformat(timespec="seconds")
        entry.update(extra or {})
        self.save()
        return entry

    def save(self) -> None:
        try:
            write_atomic(self.path, json.dumps(self.data, indent=4, ensure_ascii=False))
        except OSError as err:
            raise BookError(f"Cannot write the lorebook {self.path}: {err}") from err


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None
