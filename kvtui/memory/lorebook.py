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
its content in place (side prompts use it).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvtui.atomic import write_atomic
from kvtui.errors import KvtuiError
from kvtui.memory.contract import Memory
from kvtui.memory.settings import EntryMode, MemorySettings, OrderMode

# SillyTavern 1.18 newWorldInfoEntryDefinition minus the fields excluded from the template.
ENTRY_TEMPLATE: dict[str, Any] = {
    "key": [],
    "keysecondary": [],
    "comment": "",
    "content": "",
    "constant": False,
    "vectorized": False,
    "selective": True,
    "selectiveLogic": 0,
    "addMemo": False,
    "order": 100,
    "position": 0,
    "disable": False,
    "ignoreBudget": False,
    "excludeRecursion": False,
    "preventRecursion": False,
    "matchPersonaDescription": False,
    "matchCharacterDescription": False,
    "matchCharacterPersonality": False,
    "matchCharacterDepthPrompt": False,
    "matchScenario": False,
    "matchCreatorNotes": False,
    "delayUntilRecursion": 0,
    "probability": 100,
    "useProbability": True,
    "depth": 4,
    "outletName": "",
    "group": "",
    "groupOverride": False,
    "groupWeight": 100,
    "scanDepth": None,
    "caseSensitive": None,
    "matchWholeWords": None,
    "useGroupScoring": None,
    "automationId": "",
    "role": 0,
    "sticky": None,
    "cooldown": None,
    "delay": None,
    "triggers": [],
}
MAX_UID = 1_000_000
MEMORY = "memory"
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]')
_NUMBER = re.compile(r"\[(0+)\]|\((0+)\)|\{(0+)\}|#(0+)")


class BookError(KvtuiError):
    """A lorebook kvtui may not or cannot write; the message says what to do."""


@dataclass(frozen=True)
class EntrySettings:
    """How an entry is activated and placed (the memory settings, or a side prompt's own)."""

    mode: EntryMode = EntryMode.CONSTANT
    position: int = 1
    depth: int = 4
    outlet: str = ""
    order_mode: OrderMode = OrderMode.AUTO
    order_value: int = 100
    prevent_recursion: bool = True
    delay_until_recursion: bool = False

    @classmethod
    def from_memory(cls, ms: MemorySettings) -> EntrySettings:
        return cls(
            mode=ms.memory_mode,
            position=ms.memory_position,
            depth=ms.memory_depth,
            outlet=ms.memory_outlet,
            order_mode=ms.memory_order_mode,
            order_value=ms.memory_order_value,
            prevent_recursion=ms.memory_prevent_recursion,
            delay_until_recursion=ms.memory_delay_until_recursion,
        )

    def apply(self, entry: dict[str, Any], number: int | None) -> None:
        entry["constant"] = self.mode is EntryMode.CONSTANT
        entry["vectorized"] = self.mode is EntryMode.VECTORIZED
        entry["position"] = self.position
        entry["depth"] = self.depth
        entry["outletName"] = self.outlet if self.position == 7 else ""
        order = number if self.order_mode is OrderMode.AUTO and number is not None else None
        entry["order"] = max(0, min(9999, self.order_value if order is None else order))
        entry["preventRecursion"] = self.prevent_recursion
        entry["delayUntilRecursion"] = self.delay_until_recursion


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


def book_name(template: str, chat_title: str) -> str:
    """The book's name from ``memory_book_name`` (``{{chat}}`` = the chat's title)."""
    return template.replace("{{chat}}", chat_title).strip()


def book_file_name(name: str) -> str:
    """``name`` as a World Info file name (characters files cannot hold are replaced)."""
    safe = _UNSAFE.sub("_", name).strip().strip(".").strip()
    return f"{safe or 'kvtui'}.json"


def worlds_dir(st_dir: Path | None, data_dir: Path | None = None) -> Path:
    """SillyTavern's ``worlds/``, or ``worlds/`` in kvtui's data directory without one."""
    if st_dir is not None:
        return st_dir / "worlds"
    if data_dir is None:
        from platformdirs import user_data_path

        data_dir = user_data_path("kvtui")
    return data_dir / "worlds"


def format_title(
    fmt: str,
    number: int,
    memory: Memory,
    *,
    char: str = "",
    user: str = "",
    scene: str = "",
    messages: int = 0,
    now: datetime | None = None,
) -> str:
    """``[000] - {{title}}`` style titles: the first number placeholder is zero-padded."""
    moment = (now or datetime.now(UTC)).astimezone()

    def number_text(match: re.Match[str]) -> str:
        zeros = next(g for g in match.groups() if g)
        padded = str(number).zfill(len(zeros))
        return match.group(0).replace(zeros, padded)

    text = _NUMBER.sub(number_text, fmt, count=1)
    for key, value in (
        ("{{title}}", memory.title),
        ("{{char}}", char),
        ("{{user}}", user),
        ("{{scene}}", scene),
        ("{{messages}}", str(messages)),
        ("{{date}}", f"{moment:%Y-%m-%d}"),
        ("{{time}}", f"{moment:%H:%M}"),
    ):
        text = text.replace(key, value)
    return text.strip()


def binding_hint(name: str, path: Path, *, in_st: bool) -> str:
    """What the user does next in SillyTavern to use the book."""
    if not in_st:
        return (
            f"Saved to {path}. No SillyTavern directory is set (st_dir): import this file in "
            "SillyTavern's World Info panel, then bind it to the chat."
        )
    return (
        f'Saved to the lorebook "{name}". To use it, open the chat in SillyTavern, then the '
        'chat menu → "Chat Lore" (the book icon) and pick this book. SillyTavern\'s open tab '
        "caches lorebooks: reload the page before editing this book there, or the tab's copy "
        "overwrites kvtui's entries."
    )


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
