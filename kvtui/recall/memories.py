"""The memories recall chooses from: kvtui's entries in SillyTavern World Info files.

The memory books are written by ``kvtui.memory`` (a lorebook per chat, ``<st_dir>/worlds/kvtui -
<chat title>.json``, each entry marked ``"kvtui": true``; :func:`kvtui.recall.books.memory_books`
finds a chat's book). Recall only reads them, through the
small :class:`MemorySource` interface, so it works with any writer and in tests with plain files:
:class:`LorebookSource` reads the books a callable names for a chat, keeps only enabled entries
carrying kvtui's marker and ``kvtui_kind: "memory"`` (a book may also hold the user's own entries
and kvtui's side-prompt trackers: never recalled), and parses
each file again only when its size or modification time changed. A missing book means no memories;
an unreadable or damaged one too, with the reason kept in :attr:`LorebookSource.last_error` —
a request is never failed because of a memory book.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

MARKER = "kvtui"
"""The entry field that marks an entry kvtui wrote (``"kvtui": true``)."""

MEMORY_KIND = "memory"
"""``kvtui_kind`` of a memory entry (an entry without ``kvtui_kind`` counts as one too)."""

SELECTIVE_AND_ANY, SELECTIVE_NOT_ALL, SELECTIVE_NOT_ANY, SELECTIVE_AND_ALL = 0, 1, 2, 3


@dataclass(frozen=True)
class Memory:
    """One memory entry, with the World Info fields recall uses."""

    id: str  # stable across reads: "<book file name>#<uid>"
    uid: int
    title: str
    content: str
    keys: tuple[str, ...] = ()
    secondary: tuple[str, ...] = ()
    selective: bool = True
    selective_logic: int = SELECTIVE_AND_ANY
    constant: bool = False
    order: int = 100
    case_sensitive: bool | None = None
    whole_words: bool | None = None
    scan_depth: int | None = None
    number: int | None = None  # kvtui's memory number (``kvtui_number``): the chronology


class MemorySource(Protocol):
    """Where a chat's memories come from."""

    def memories(self, chat: str) -> list[Memory]: ...


def _opt_bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _int(value: object, default: int) -> int:
    if isinstance(value, bool):
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return default


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(s.strip() for s in value if isinstance(s, str) and s.strip())


def parse_entry(book: str, uid_key: str, entry: Mapping[str, Any]) -> Memory | None:
    """A :class:`Memory` for a kvtui entry; None for other entries or disabled ones."""
    if entry.get(MARKER) is not True or entry.get("disable") is True:
        return None
    kind = entry.get("kvtui_kind")
    if kind is not None and kind != MEMORY_KIND:
        return None  # kvtui's other entries (side-prompt trackers) are not memories
    content = entry.get("content")
    if not isinstance(content, str) or not content.strip():
        return None
    uid = _int(entry.get("uid"), _int(uid_key if uid_key.isdigit() else None, -1))
    depth = entry.get("scanDepth")
    return Memory(
        id=f"{book}#{uid}",
        uid=uid,
        title=str(entry.get("comment") or ""),
        content=content.strip(),
        keys=_strings(entry.get("key")),
        secondary=_strings(entry.get("keysecondary")),
        selective=entry.get("selective") is not False,
        selective_logic=_int(entry.get("selectiveLogic"), SELECTIVE_AND_ANY),
        constant=entry.get("constant") is True,
        order=_int(entry.get("order"), 100),
        case_sensitive=_opt_bool(entry.get("caseSensitive")),
        whole_words=_opt_bool(entry.get("matchWholeWords")),
        scan_depth=depth if isinstance(depth, int) and not isinstance(depth, bool) else None,
        number=number if (number := _int(entry.get("kvtui_number"), -1)) >= 0 else None,
    )


def parse_book(book: str, data: object) -> list[Memory]:
    """The kvtui memories of one World Info file's JSON, in uid order."""
    entries = data.get("entries") if isinstance(data, Mapping) else None
    if not isinstance(entries, Mapping):
        raise ValueError("it has no 'entries' object (not a World Info file)")
    out = [
        memory
        for key, entry in entries.items()
        if isinstance(entry, Mapping) and (memory := parse_entry(book, str(key), entry))
    ]
    return sorted(out, key=lambda m: m.uid)


class LorebookSource:
    """Memories read from World Info files; ``paths(chat)`` names a chat's books."""

    def __init__(self, paths: Callable[[str], Sequence[Path]]) -> None:
        self.paths = paths
        self.last_error: str | None = None
        self._cache: dict[Path, tuple[tuple[int, int], list[Memory]]] = {}

    def memories(self, chat: str) -> list[Memory]:
        self.last_error = None
        out: list[Memory] = []
        for path in self.paths(chat):
            out += self._read(path)
        return out

    def _read(self, path: Path) -> list[Memory]:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._cache.pop(path, None)
            return []
        except OSError as err:
            self.last_error = f"Could not read memory book {path}: {err.strerror or err}"
            return []
        stamp = (st.st_size, st.st_mtime_ns)
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            memories = parse_book(path.name, data)
        except (OSError, UnicodeDecodeError, ValueError) as err:
            self.last_error = (
                f"Memory book {path} is unreadable ({err}); recall skips it until it is fixed."
            )
            return []
        self._cache[path] = (stamp, memories)
        return memories


class StaticSource:
    """Fixed memories per chat (for tests, and callers that already hold the entries)."""

    def __init__(self, by_chat: Mapping[str, Sequence[Memory]] | None = None) -> None:
        self.by_chat: dict[str, list[Memory]] = {k: list(v) for k, v in (by_chat or {}).items()}

    def memories(self, chat: str) -> list[Memory]:
        return list(self.by_chat.get(chat, ()))
