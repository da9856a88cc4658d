"""Read-only access to one SillyTavern user directory (``data/<user>/``).

Characters come from ``characters/*.png``, groups from ``groups/*.json``, 1:1 chats from
``chats/<avatar stem>/*.jsonl`` and group chats from ``group chats/<chat id>.jsonl`` (resolved
through the groups, since the file is named by chat id, not group id). ``active_chat`` is the
most recently written chat file; finding it costs one ``stat`` per chat file and parses nothing
but the (cached) group files and the one card it names. It is NOT reliably the chat the user
has open: SillyTavern writes no file when a chat is opened (and re-saves the chat being left),
so which chat a request is for comes from ``kvtui.sillytavern.chatindex`` and ``evidence``.
``backups/`` and the temp files of SillyTavern's atomic writes are never looked at.

Nothing here writes to the directory. Damaged files are skipped with a logged warning (once per
version of the file), so a half-broken data directory still lists everything else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from kvtui.errors import KvtuiError
from kvtui.sillytavern.cards import Card, CardError, read_card
from kvtui.sillytavern.chatfile import read_chat_file
from kvtui.sillytavern.groupfile import read_group
from kvtui.sillytavern.layout import (
    CHARACTERS_DIR,
    CHATS_DIR,
    GROUP_CHATS_DIR,
    GROUPS_DIR,
    is_chat_file_name,
)
from kvtui.sillytavern.layout import plain_name as _plain_name
from kvtui.sillytavern.models import Chat, ChatRef, Group, Member
from kvtui.sillytavern.watch import OnActiveChange, watch_active

__all__ = [
    "CHARACTERS_DIR",
    "CHATS_DIR",
    "GROUPS_DIR",
    "GROUP_CHATS_DIR",
    "OnActiveChange",
    "SillyTavernData",
    "SillyTavernError",
    "is_chat_file_name",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
_Stamp = tuple[int, int]  # (mtime_ns, size)


class SillyTavernError(KvtuiError):
    """A SillyTavern file kvtui was asked for and cannot read; the message says which."""


class _StampCache(dict[Path, tuple[_Stamp, Any]]):
    """Parsed file contents keyed by path, valid while mtime and size are unchanged."""

    def load(self, path: Path, parse: Callable[[Path], T | None]) -> T | None:
        try:
            st = path.stat()
        except OSError:
            self.pop(path, None)
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        cached = self.get(path)
        if cached is not None and cached[0] == stamp:
            value: T | None = cached[1]
            return value
        result = parse(path)
        self[path] = (stamp, result)
        return result


def _read_card_or_none(path: Path) -> Card | None:
    try:
        return read_card(path)
    except (CardError, OSError) as err:
        log.warning("Skipping character card %s: %s", path, err)
        return None


class SillyTavernData:
    """One SillyTavern user directory, read on demand with small stat-validated caches."""

    def __init__(self, user_dir: Path) -> None:
        self.user_dir = Path(user_dir)
        self._cards = _StampCache()
        self._groups = _StampCache()

    # -- characters -------------------------------------------------------------------------

    def characters(self) -> list[Card]:
        """Every readable character card, sorted by name."""
        directory = self.user_dir / CHARACTERS_DIR
        cards = [
            card
            for path in _files(directory, lambda n: n.lower().endswith(".png"))
            if (card := self._cards.load(path, _read_card_or_none)) is not None
        ]
        return sorted(cards, key=lambda c: (c.name.casefold(), c.avatar))

    def card(self, avatar: str) -> Card | None:
        """The card stored as ``characters/<avatar>``, or None when missing or unreadable."""
        if not _plain_name(avatar):
            return None
        return self._cards.load(self.user_dir / CHARACTERS_DIR / avatar, _read_card_or_none)

    # -- groups -----------------------------------------------------------------------------

    def groups(self) -> list[Group]:
        """Every readable group, sorted by name."""
        directory = self.user_dir / GROUPS_DIR
        groups = [
            group
            for path in _files(directory, lambda n: n.endswith(".json") and not n.startswith("."))
            if (group := self._groups.load(path, read_group)) is not None
        ]
        return sorted(groups, key=lambda g: (g.name.casefold(), g.id))

    def group(self, group_id: str) -> Group | None:
        return next((g for g in self.groups() if g.id == group_id), None)

    def _group_by_chat(self) -> dict[str, Group]:
        index: dict[str, Group] = {}
        for group in sorted(self.groups(), key=lambda g: g.id):
            for chat_id in group.chats:
                index.setdefault(chat_id, group)
        return index

    # -- chats ------------------------------------------------------------------------------

    def _chat_files(self) -> Iterator[tuple[Path, int]]:
        """``(path, mtime_ns)`` of every chat file, 1:1 and group, by stat only."""
        chats = self.user_dir / CHATS_DIR
        try:
            folders = [e for e in os.scandir(chats) if e.is_dir()]
        except OSError:
            folders = []
        for folder in folders:
            yield from _stat_files(Path(folder.path))
        yield from _stat_files(self.user_dir / GROUP_CHATS_DIR)

    def _ref(self, path: Path, mtime_ns: int, by_chat: Mapping[str, Group]) -> ChatRef | None:
        chat_id = path.stem
        mtime = mtime_ns / 1e9
        if path.parent.parent.name == CHATS_DIR and path.parent.parent.parent == self.user_dir:
            avatar = path.parent.name + ".png"
            card = self.card(avatar)
            name = card.name if card is not None else path.parent.name
            return ChatRef(chat_id, path, None, avatar, name, mtime)
        group = by_chat.get(chat_id)
        if group is None:
            return None  # a group chat no group lists (deleted group): not a chat ST can open
        return ChatRef(chat_id, path, group.id, None, group.name, mtime)

    def _refs_newest_first(self, files: list[tuple[Path, int]]) -> Iterator[ChatRef]:
        files.sort(key=lambda f: (f[1], str(f[0])), reverse=True)
        by_chat = self._group_by_chat()
        for path, mtime_ns in files:
            ref = self._ref(path, mtime_ns, by_chat)
            if ref is not None:
                yield ref

    def chats(self) -> list[ChatRef]:
        """Every chat (1:1 and group), most recently written first."""
        return list(self._refs_newest_first(list(self._chat_files())))

    def active_chat(self) -> ChatRef | None:
        """The most recently written chat file: the chat the user is in (None when no chats)."""
        return next(self._refs_newest_first(list(self._chat_files())), None)

    def find_chat(self, chat_id: str, *, avatar: str | None = None) -> ChatRef | None:
        """The chat SillyTavern calls ``chat_id`` (a group chat id or a 1:1 file stem).

        ``avatar`` restricts the search to that character's 1:1 chats (two characters can own
        chats with the same name); otherwise the most recently written match wins.
        """
        if not _plain_name(chat_id + ".jsonl"):
            return None
        files: list[tuple[Path, int]] = []
        if avatar is None:
            files += _stat_paths([self.user_dir / GROUP_CHATS_DIR / f"{chat_id}.jsonl"])
            try:
                folders = [Path(e.path) for e in os.scandir(self.user_dir / CHATS_DIR)]
            except OSError:
                folders = []
        else:
            folders = [self.user_dir / CHATS_DIR / Path(avatar).stem] if _plain_name(avatar) else []
        files += _stat_paths([folder / f"{chat_id}.jsonl" for folder in folders])
        return next(self._refs_newest_first(files), None)

    def read_chat(self, ref: ChatRef) -> Chat:
        """Parse the chat file of ``ref``. Raises ``SillyTavernError`` when it cannot be read."""
        fallback: Mapping[str, Any] | None = None
        if ref.group_id is not None:
            group = self.group(ref.group_id)
            meta = group.chat_metadata.get(ref.chat_id) if group is not None else None
            fallback = meta if isinstance(meta, dict) else None
        try:
            return read_chat_file(ref.path, ref, fallback_metadata=fallback)
        except OSError as err:
            raise SillyTavernError(f"Cannot read chat {ref.chat_id!r}: {err}") from err

    def members(self, ref: ChatRef) -> list[Member]:
        """The characters of a chat: a 1:1 chat's character, or a group's members (with mutes)."""
        if ref.group_id is None:
            if ref.avatar is None:
                return []
            return [Member(self._name_of(ref.avatar), ref.avatar, False)]
        group = self.group(ref.group_id)
        if group is None:
            return []
        return [Member(self._name_of(a), a, group.is_muted(a)) for a in group.members]

    def _name_of(self, avatar: str) -> str:
        card = self.card(avatar)
        return card.name if card is not None else Path(avatar).stem

    # -- settings ---------------------------------------------------------------------------

    def user_name(self) -> str:
        """The user's persona name from ``settings.json`` (``"User"`` when unknown)."""
        try:
            settings = json.loads((self.user_dir / "settings.json").read_bytes())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return "User"
        if not isinstance(settings, dict):
            return "User"
        power = settings.get("power_user")
        avatar = settings.get("user_avatar")
        if isinstance(power, dict) and isinstance(power.get("personas"), dict):
            persona = power["personas"].get(avatar)
            if isinstance(persona, str) and persona:
                return persona
        name = settings.get("username")
        return name if isinstance(name, str) and name else "User"

    # -- watching ---------------------------------------------------------------------------

    async def watch_active(
        self,
        on_change: OnActiveChange,
        stop_event: asyncio.Event,
        *,
        every_write: bool = False,
        debounce_ms: int = 100,
        force_polling: bool | None = None,
    ) -> None:
        """Call ``on_change(ref)`` whenever the active chat becomes a different chat file.

        With ``every_write`` it is also called when the active chat file is rewritten. Runs until
        ``stop_event`` (an ``asyncio.Event``) is set. See ``kvtui.sillytavern.watch``.
        """
        await watch_active(
            self,
            on_change,
            stop_event,
            every_write=every_write,
            debounce_ms=debounce_ms,
            force_polling=force_polling,
        )


def _files(directory: Path, accept: Callable[[str], bool]) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(directory) if accept(e.name) and e.is_file())
    except OSError:
        return []


def _stat_files(directory: Path) -> Iterator[tuple[Path, int]]:
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not is_chat_file_name(entry.name):
            continue
        try:
            if entry.is_file():
                yield Path(entry.path), entry.stat().st_mtime_ns
        except OSError:
            continue  # deleted or replaced between listing and stat


def _stat_paths(paths: list[Path]) -> list[tuple[Path, int]]:
    found: list[tuple[Path, int]] = []
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            continue
        found.append((path, st.st_mtime_ns))
    return found
