"""Where recall finds a chat's memories: the book ``kvtui.memory`` writes for it.

The memory workflow names a chat's book from ``memory_book_name`` (default ``kvtui - {{chat}}``)
and the chat's title (the 1:1 chat's id, or ``<group name> - <chat id>``) and keeps it in
SillyTavern's ``worlds/`` (or kvtui's own data directory without SillyTavern). The proxy knows a
chat by its id only, so :func:`memory_books` looks the chat up once in the data directory and
remembers its title.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from kvtui.memory.lorebook import book_file_name, book_name
from kvtui.memory.workflow import chat_title
from kvtui.recall.memories import LorebookSource
from kvtui.sillytavern.models import ChatRef


def memory_books(
    worlds: Path,
    book_template: str,
    find_chat: Callable[[str], ChatRef | None] | None = None,
) -> LorebookSource:
    """A source reading ``worlds/<book of chat>.json`` for each chat id.

    ``find_chat`` is ``SillyTavernData.find_chat`` (or None without a data directory: the chat id
    is then its title, as for every 1:1 chat).
    """
    titles: dict[str, str] = {}

    def paths(chat: str) -> list[Path]:
        title = titles.get(chat)
        if title is None:
            ref = find_chat(chat) if find_chat is not None else None
            title = chat_title(ref) if ref is not None else chat
            if ref is not None:
                titles[chat] = title  # a chat's title does not change; misses are retried
        return [worlds / book_file_name(book_name(book_template, title))]

    return LorebookSource(paths)
