"""Files written by the SillyTavern KV Cache Manager extension: its names, mapped back to chats.

The extension (fortrest-jr/kv_cache-manager, ``utils/utils.js``) collapses names with
``String(s).replace(/[^a-zA-Z0-9_-]/g, '_')``: every ``@``, space, dot and non-ASCII letter of a
SillyTavern chat id or character name becomes ``_`` (JavaScript strings are UTF-16, so a
character outside the BMP — an emoji — becomes ``__``). A missing chat id is ``unknown``. Its
timestamps are *local* time (``getFullYear()``…``getSeconds()``); only its very first format,
``{chat}_slot{N}_{ts}``, used ``toISOString()`` (UTC).

Its names in use over time (``core/file-manager.js`` and the history of ``index.js``)::

    {chat}_{ts}_character_{name}.bin             current autosave
    {chat}_{ts}_tag_{tag}_character_{name}.bin   current tagged save
    {chat}_{ts}_tag_{tag}_slot{N}.bin            read as "old format" by the current parser
    {chatId}_{ts}[_named_{tag}]_slot{N}.bin      Nov 2025
    [{tag}_]{chat}_{ts}_slot{N}.bin              Nov 2025 (tag = the typed save name)
    [{tag}_]{chat}_slot{N}_{ts}.bin              first version, UTC

A collapsed name cannot be read back; :func:`resolve_extension_names` normalises every known
chat id (and title) and member name the extension's way and matches. Two known chats or members
that collapse to the same text are reported as ambiguous with both candidates, never guessed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from kvtui.store.names import ParsedName

_NOT_KEPT = re.compile(r"[^a-zA-Z0-9_-]")


def extension_normalize(text: str | None, default: str = "") -> str:
    """The extension's ``normalizeString``: UTF-16 code units outside ``[a-zA-Z0-9_-]`` → ``_``."""
    if not text:
        return default
    return _NOT_KEPT.sub(lambda m: "__" if ord(m.group()) > 0xFFFF else "_", text)


def extension_chat_id(chat_id: str | None) -> str:
    """``normalizeChatId``: as :func:`extension_normalize`, ``unknown`` for a missing id."""
    return extension_normalize(chat_id, "unknown")


def could_be_extension_name(component: str) -> bool:
    """Whether a name component only uses the characters the extension leaves."""
    return _NOT_KEPT.search(component) is None


def local_to_utc(stamp: datetime) -> datetime:
    """A name's wall-clock stamp (parsed as if UTC) re-read as this machine's local time."""
    return stamp.replace(tzinfo=None).astimezone(UTC)


class Match(StrEnum):
    EXACT = "exact"
    """One known chat (and, where the name has one, one member) matched."""
    AMBIGUOUS = "ambiguous"
    """More than one known chat or member collapses to the name: see the candidates."""
    UNKNOWN = "unknown"
    """No known chat collapses to the name (a deleted chat, or another data directory)."""


@dataclass(frozen=True)
class Resolution:
    """What a collapsed extension name stands for among the known chats and members.

    ``chat``/``character`` are set only when exactly one candidate matched; ``character`` stays
    None for the ``_slot{N}`` forms unless the chat has a single member. ``tag`` is the typed save
    name that the oldest forms put before the chat (``{tag}_{chat}_…``).
    """

    status: Match
    chat: str | None = None
    character: str | None = None
    chat_candidates: tuple[str, ...] = ()
    character_candidates: tuple[str, ...] = ()
    tag: str | None = None

    @property
    def resolved(self) -> bool:
        return self.status is Match.EXACT and self.chat is not None

    def describe(self) -> str:
        """One line for the picker, ``kvtui ls`` or the event log."""
        if self.status is Match.EXACT:
            who = f", {self.character}" if self.character else ""
            return f"extension save of {self.chat}{who}"
        if self.status is Match.AMBIGUOUS:
            options = self.chat_candidates if len(self.chat_candidates) > 1 else ()
            options = options or self.character_candidates
            return "extension save, ambiguous: could be " + " or ".join(repr(o) for o in options)
        return "extension save of a chat kvtui does not know"


@dataclass(frozen=True)
class KnownChats:
    """The chats and members a resolver matches against, indexed by their collapsed forms.

    Build it once per change of the SillyTavern data (``KnownChats.build``) and hand it to the
    store (``SaveStore.set_known_chats``).
    """

    by_collapsed: Mapping[str, tuple[str, ...]]
    members: Mapping[str, tuple[str, ...]]

    @classmethod
    def build(
        cls,
        known_chats: Iterable[tuple[str, str]],
        members: Mapping[str, Iterable[str]],
    ) -> KnownChats:
        by: dict[str, list[str]] = {}
        for chat_id, title in known_chats:
            for form in {extension_chat_id(chat_id), extension_normalize(title)}:
                if form and chat_id not in by.setdefault(form, []):
                    by[form].append(chat_id)
        return cls(
            by_collapsed={k: tuple(sorted(v)) for k, v in by.items()},
            members={chat: tuple(dict.fromkeys(names)) for chat, names in members.items()},
        )


class _ChatRef(Protocol):
    @property
    def chat_id(self) -> str: ...

    @property
    def display_name(self) -> str: ...


class _Member(Protocol):
    @property
    def name(self) -> str: ...


class _SillyTavernData(Protocol):
    """What :meth:`KnownChats.from_sillytavern` needs (``kvtui.sillytavern.SillyTavernData``)."""

    def chats(self) -> Sequence[_ChatRef]: ...

    def members(self, ref: Any) -> Sequence[_Member]: ...


def known_chats_from(data: _SillyTavernData) -> KnownChats:
    """The ``KnownChats`` of a SillyTavern data directory: every chat id with its title (the
    character's or the group's name) and its members' names."""
    chats = data.chats()
    return KnownChats.build(
        [(ref.chat_id, ref.display_name) for ref in chats],
        {ref.chat_id: [m.name for m in data.members(ref)] for ref in chats},
    )


def _chat_candidates(collapsed: str, known: KnownChats) -> tuple[tuple[str, ...], str | None]:
    exact = known.by_collapsed.get(collapsed, ())
    if exact:
        return exact, None
    # The oldest forms put the typed save name first: "{tag}_{chat}".
    found: dict[str, str] = {}
    for form, chats in known.by_collapsed.items():
        if collapsed.endswith("_" + form) and len(collapsed) > len(form) + 1:
            for chat in chats:
                found.setdefault(chat, collapsed[: -len(form) - 1])
    if not found:
        return (), None
    tags = set(found.values())
    return tuple(sorted(found)), (tags.pop() if len(tags) == 1 else None)


def resolve_extension_names(
    parsed: ParsedName,
    known_chats: Iterable[tuple[str, str]] | KnownChats,
    members: Mapping[str, Iterable[str]] | None = None,
) -> Resolution:
    """Map a parsed extension name back to the real chat id and member name.

    ``known_chats`` are ``(chat_id, title)`` pairs (SillyTavern's chat ids; titles match the
    first formats, which used the chat's name), ``members`` each chat's member names.
    """
    known = (
        known_chats
        if isinstance(known_chats, KnownChats)
        else KnownChats.build(known_chats, members or {})
    )
    chats, tag = _chat_candidates(parsed.chat, known)
    if not chats:
        return Resolution(Match.UNKNOWN)
    tag = parsed.tag if parsed.tag is not None else tag
    pool: dict[str, str] = {}
    for chat in chats:
        names = known.members.get(chat, ())
        if parsed.legacy:
            if len(names) == 1:
                pool[chat] = names[0]
            continue
        for name in names:
            if extension_normalize(name) == parsed.character:
                pool.setdefault(chat, name)
                if pool[chat] != name:
                    # Two members of one chat collapse alike: ambiguous within the chat.
                    same = [n for n in names if extension_normalize(n) == parsed.character]
                    return Resolution(
                        Match.AMBIGUOUS,
                        chat=chat if len(chats) == 1 else None,
                        chat_candidates=chats,
                        character_candidates=tuple(same),
                        tag=tag,
                    )
    if len(chats) > 1:
        narrowed = tuple(c for c in chats if c in pool)
        if len(narrowed) == 1 and not parsed.legacy:
            chat = narrowed[0]
            return Resolution(Match.EXACT, chat, pool[chat], (chat,), (pool[chat],), tag)
        return Resolution(
            Match.AMBIGUOUS,
            chat_candidates=narrowed or chats,
            character_candidates=tuple(dict.fromkeys(pool.values())),
            tag=tag,
        )
    chat = chats[0]
    character = pool.get(chat)  # None: a slot form of a group, or no longer a member
    return Resolution(Match.EXACT, chat, character, chats, (character,) if character else (), tag)
