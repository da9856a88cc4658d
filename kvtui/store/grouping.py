"""Grouping and filtering saves for the load picker: chat → character → saves (pure functions).

Groups are keyed by the normalised names, so a kvtui save (raw names from its sidecar) and an
extension save of the same chat and character land together. The current chat comes first, then
chats by newest save; files kvtui cannot read (``UNPARSED_CHAT``) come last. Characters within a
chat are ordered by newest save too, and saves newest first.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property

from kvtui.store.names import normalize
from kvtui.store.store import SaveEntry


def _fold(*texts: str) -> str:
    """Lower-cased search text; underscores also read as spaces, so ``forest party`` matches
    a name that only exists as ``Forest_Party``."""
    parts = [t for text in texts for t in (text, text.replace("_", " "))]
    return "\n".join(parts).casefold()


@dataclass(frozen=True)
class CharacterSaves:
    """One character's saves in one chat, newest first (never empty)."""

    character: str
    character_key: str
    saves: tuple[SaveEntry, ...]

    @property
    def latest(self) -> SaveEntry:
        return self.saves[0]

    @cached_property
    def search_text(self) -> str:
        return _fold(self.character, self.character_key)


@dataclass(frozen=True)
class ChatGroup:
    """One chat's characters, most recently saved first."""

    chat: str
    chat_key: str
    is_current: bool
    characters: tuple[CharacterSaves, ...]

    @property
    def newest(self) -> datetime:
        return max(c.latest.timestamp for c in self.characters)

    @property
    def save_count(self) -> int:
        return sum(len(c.saves) for c in self.characters)

    @cached_property
    def search_text(self) -> str:
        return _fold(self.chat, self.chat_key)


def _display(saves: Sequence[SaveEntry], attr: str) -> str:
    """The raw name from the newest save that has a sidecar, else the newest save's name."""
    for entry in saves:
        if entry.meta is not None:
            return str(getattr(entry, attr))
    return str(getattr(saves[0], attr))


def _current_key(current_chat: str | None, keys: Iterable[str]) -> str | None:
    if current_chat is None:
        return None
    key = normalize(current_chat)
    known = set(keys)
    if key not in known and current_chat in known:
        return current_chat  # given as a normalised name already
    return key


def group_saves(entries: Iterable[SaveEntry], current_chat: str | None) -> list[ChatGroup]:
    """Group saves by chat, then character; ``current_chat`` (raw or normalised) comes first."""
    by_chat: dict[str, dict[str, list[SaveEntry]]] = {}
    for entry in entries:
        by_chat.setdefault(entry.chat_key, {}).setdefault(entry.character_key, []).append(entry)
    current = _current_key(current_chat, by_chat)
    groups: list[ChatGroup] = []
    for chat_key, characters in by_chat.items():
        people: list[CharacterSaves] = []
        all_saves: list[SaveEntry] = []
        for character_key, saves in characters.items():
            saves.sort(key=lambda e: e.sort_key, reverse=True)
            all_saves.append(saves[0])
            people.append(CharacterSaves(_display(saves, "character"), character_key, tuple(saves)))
        people.sort(key=lambda c: c.character.casefold())
        people.sort(key=lambda c: c.latest.timestamp, reverse=True)
        all_saves.sort(key=lambda e: e.sort_key, reverse=True)
        groups.append(
            ChatGroup(
                chat=_display(all_saves, "chat"),
                chat_key=chat_key,
                is_current=chat_key == current and chat_key != "",
                characters=tuple(people),
            )
        )
    groups.sort(key=lambda g: g.chat.casefold())
    groups.sort(key=lambda g: g.newest, reverse=True)
    groups.sort(key=lambda g: (not g.is_current, g.chat_key == ""))
    return groups


def filter_groups(groups: Sequence[ChatGroup], query: str) -> list[ChatGroup]:
    """The groups narrowed to saves matching every word of ``query`` (case-insensitive).

    Each word may match the chat, the character or the save's tag: a word that matches a chat
    keeps all of it, one that matches a character keeps all of that character's saves.
    """
    terms = query.casefold().split()
    if not terms:
        return list(groups)
    result: list[ChatGroup] = []
    for group in groups:
        chat_text = group.search_text
        left = [t for t in terms if t not in chat_text]
        if not left:
            result.append(group)
            continue
        kept: list[CharacterSaves] = []
        for people in group.characters:
            character_text = people.search_text
            rest = [t for t in left if t not in character_text]
            if not rest:
                kept.append(people)
                continue
            saves = tuple(
                s for s in people.saves if s.tag is not None and _tag_matches(s.tag, rest)
            )
            if saves:
                kept.append(replace(people, saves=saves))
        if kept:
            result.append(replace(group, characters=tuple(kept)))
    return result


def _tag_matches(tag: str, terms: Sequence[str]) -> bool:
    text = _fold(tag)
    return all(t in text for t in terms)
