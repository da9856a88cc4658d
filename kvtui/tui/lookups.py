"""Reading what the dialogs offer: saves for the picker, names for the assign dialog.

Plain blocking functions with no Textual in them; the dashboard runs them in a thread worker.
They read the save directory and (when ``st_dir`` is set) the SillyTavern data directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kvtui.service import KvService
from kvtui.sillytavern.data import SillyTavernData
from kvtui.store import SaveEntry


@dataclass(frozen=True)
class AssignSuggestions:
    """Names offered while typing. ``members`` maps a chat to the characters in it."""

    chats: tuple[str, ...] = ()
    characters: tuple[str, ...] = ()
    members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    titles: Mapping[str, str] = field(default_factory=dict)
    """SillyTavern's name for a chat id: the group's name, or the 1:1 character's."""

    def characters_for(self, chat: str) -> tuple[str, ...]:
        """The chat's members when the chat is known, else every known character."""
        return self.members.get(chat.strip()) or self.characters

    def matching_chats(self, typed: str) -> list[str]:
        """Chat ids whose id or title contains ``typed`` (case-insensitive), in order."""
        needle = typed.strip().casefold()
        return [
            chat
            for chat in self.chats
            if needle in chat.casefold() or needle in self.titles.get(chat, "").casefold()
        ]

    def resolve_chat(self, typed: str) -> str:
        """A typed chat title (e.g. ``Forest Party``) as its chat id when unambiguous."""
        typed = typed.strip()
        if typed in self.chats:
            return typed
        ids = [c for c in self.chats if self.titles.get(c, "").casefold() == typed.casefold()]
        return ids[0] if len(ids) == 1 else typed


@dataclass(frozen=True)
class PickerData:
    entries: Sequence[SaveEntry]
    current_chat: str | None
    titles: Mapping[str, str] = field(default_factory=dict)
    """SillyTavern's names of the chats (chat id → group or character name)."""


def _unique(names: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for name in names if name))


def sillytavern_active_chat(st_dir: Path | None) -> str | None:
    """The chat the user is in on SillyTavern (its most recently written chat file)."""
    if st_dir is None:
        return None
    ref = SillyTavernData(st_dir).active_chat()
    return ref.chat_id if ref is not None else None


def current_chat(service: KvService) -> str | None:
    """The chat kvtui is serving (the proxy's), else SillyTavern's active chat."""
    return service.current_chat or sillytavern_active_chat(service.settings.st_dir)


def chat_titles(st_dir: Path | None) -> dict[str, str]:
    """SillyTavern's display name of every chat id (empty without a data directory)."""
    if st_dir is None or not st_dir.is_dir():
        return {}
    return {ref.chat_id: ref.display_name for ref in SillyTavernData(st_dir).chats()}


def picker_data(service: KvService, fallback_chat: str | None = None) -> PickerData:
    """Every save in the directory, the chat to list first, and the chats' names."""
    store = service.require_store()
    store.ensure_fresh()
    return PickerData(
        store.entries(),
        current_chat(service) or fallback_chat,
        chat_titles(service.settings.st_dir),
    )


def assign_suggestions(service: KvService, max_chats: int = 200) -> AssignSuggestions:
    """Chats and characters from SillyTavern (newest chats first), then from the saves."""
    chats: list[str] = []
    characters: list[str] = []
    members: dict[str, tuple[str, ...]] = {}
    titles: dict[str, str] = {}
    st_dir = service.settings.st_dir
    if st_dir is not None and st_dir.is_dir():
        data = SillyTavernData(st_dir)
        for ref in data.chats()[:max_chats]:
            chats.append(ref.chat_id)
            titles[ref.chat_id] = ref.display_name
            members[ref.chat_id] = _unique([m.name for m in data.members(ref)])
        characters += [card.name for card in data.characters()]
    if service.store is not None:
        for entry in service.store.entries():
            chats.append(entry.chat)
            characters.append(entry.character)
    for row in service.book.snapshot():
        if row.chat and row.character:
            chats.append(row.chat)
            characters.append(row.character)
    return AssignSuggestions(_unique(chats), _unique(characters), members, titles)
