"""What a user means by a chat: a SillyTavern chat id, a group's title or a chat file name.

The dashboard shows "Forest Party"; SillyTavern calls that chat ``2026-05-03@19h02m11s004ms``.
:func:`resolve_chat` turns whatever the user typed into the chat id kvtui files saves under, and
refuses an unknown or ambiguous name with the candidates listed. :func:`chat_label` goes the other
way, for events, toasts and the picker: the title, with the id only where two chats share it.
Pure functions over plain data, so they are tested without a data directory.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from kvtui.errors import KvtuiError
from kvtui.store.names import normalize

MAX_CANDIDATES = 8
"""Candidates listed in a refusal."""


@dataclass(frozen=True)
class KnownChat:
    """A chat kvtui knows of: from SillyTavern's data directory, or only from saves."""

    chat_id: str
    title: str | None = None
    """SillyTavern's name for it: the group's name, or the 1:1 character's."""
    file_name: str | None = None
    """The chat file's name (``<chat id>.jsonl``) when it is in the data directory."""


class ChatRefError(KvtuiError, ValueError):
    """The typed chat is unknown or ambiguous; the message lists the candidates."""

    def __init__(self, message: str, candidates: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.candidates = tuple(candidates)


def describe(chat: KnownChat) -> str:
    """``Forest Party (2026-05-03@19h02m11s004ms)``, or the id alone when it has no title."""
    if chat.title and chat.title != chat.chat_id:
        return f"{chat.title} ({chat.chat_id})"
    return chat.chat_id


def _unique(chats: Iterable[KnownChat]) -> list[KnownChat]:
    seen: dict[str, KnownChat] = {}
    for chat in chats:
        if chat.chat_id not in seen or (chat.title and not seen[chat.chat_id].title):
            seen[chat.chat_id] = chat
    return list(seen.values())


def resolve_chat(typed: str, chats: Iterable[KnownChat]) -> str:
    """The chat id ``typed`` names.

    Tried in order: the exact chat id; the chat file name (with or without ``.jsonl``); the
    title (case-insensitive); the id the way kvtui writes it in file names (``normalize``).
    Each step that finds exactly one chat wins; one that finds several is ambiguous.

    Raises:
        ChatRefError: nothing matches, or a title names several chats (the candidates are
            listed, titles with ids).
    """
    query = typed.strip()
    known = _unique(chats)
    if not query:
        raise ChatRefError("The chat name is empty.")
    by_id = [c for c in known if c.chat_id == query]
    if by_id:
        return by_id[0].chat_id
    stem = query.removesuffix(".jsonl")
    by_file = [
        c for c in known if c.file_name is not None and c.file_name.removesuffix(".jsonl") == stem
    ]
    if len(by_file) == 1:
        return by_file[0].chat_id
    folded = query.casefold()
    by_title = [c for c in known if c.title is not None and c.title.casefold() == folded]
    if len(by_title) == 1:
        return by_title[0].chat_id
    if len(by_title) > 1:
        names = [describe(c) for c in by_title]
        raise ChatRefError(
            f"{query!r} names {len(by_title)} chats; give the chat id instead: "
            + "; ".join(names[:MAX_CANDIDATES]),
            names,
        )
    # As typed from a save file's name (the query is the normalised form), or typed plainly.
    key = normalize(query)
    by_key = [c for c in known if normalize(c.chat_id) in (query, key)]
    if len(by_key) == 1:
        return by_key[0].chat_id
    raise ChatRefError(_unknown_message(query, known), [describe(c) for c in known])


def _unknown_message(query: str, known: Sequence[KnownChat]) -> str:
    if not known:
        return f"No chat {query!r}: kvtui knows no chats (set st_dir to SillyTavern's data)."
    names = {describe(c): c for c in known}
    words = [c.title or c.chat_id for c in known] + [c.chat_id for c in known]
    close = difflib.get_close_matches(query, words, n=MAX_CANDIDATES, cutoff=0.5)
    shown = [describe(c) for c in known if (c.title or c.chat_id) in close or c.chat_id in close]
    if not shown:
        shown = list(names)[:MAX_CANDIDATES]
        lead = "Known chats"
    else:
        lead = "Did you mean"
    more = len(names) - len(shown)
    tail = f" (and {more} more)" if more > 0 and lead == "Known chats" else ""
    return f"No chat {query!r}. {lead}: " + "; ".join(shown) + tail + "."


def chat_label(chat_id: str, titles: Mapping[str, str]) -> str:
    """How a chat is shown: its title; ``title (id)`` when another chat has the same title;
    the id itself when kvtui does not know a title."""
    title = titles.get(chat_id)
    if not title:
        return chat_id
    if Counter(titles.values())[title] > 1:
        return f"{title} ({chat_id})"
    return title


def with_titles(text: str, titles: Mapping[str, str]) -> str:
    """``text`` (an event message) with every known chat id replaced by its label.

    ``Kael (2026-05-03@19h02m11s004ms) → slot 1`` becomes ``Kael (Forest Party) → slot 1``.
    Longer ids are replaced first, so an id inside another is never split.
    """
    for chat_id in sorted(titles, key=len, reverse=True):
        if chat_id and chat_id in text:
            label = chat_label(chat_id, titles)
            if label != chat_id:
                # "Forest Party (2026-…)" already names it: keep one name, not two.
                text = text.replace(f"{titles[chat_id]} ({chat_id})", label)
                text = text.replace(chat_id, label)
    return text
