"""What may be sent to llama-server and what may be deleted: restore checks and rotation.

``check_restorable`` looks at a file afresh right before a restore, because llama-server clears
the target slot on any failed restore; ``rotate`` deletes old autosaves, counting and deleting
only sound saves, so leftovers and damaged files never take a good save's place.
"""

from __future__ import annotations

import contextlib
import stat
from collections.abc import Collection
from typing import TYPE_CHECKING

from kvtui.store.entries import SaveEntry
from kvtui.store.errors import NotRestorable
from kvtui.store.names import check_filename, normalize

if TYPE_CHECKING:
    from kvtui.store.store import SaveStore


def _is_regular(mode: int) -> bool:
    return stat.S_ISREG(mode)


def check_restorable(
    store: SaveStore, entry: SaveEntry | str, n_ctx: int | None = None
) -> SaveEntry:
    """Check, without the server, that a save may be restored into a slot of ``n_ctx``.

    The file is looked at afresh: a regular file (never a symlink), non-empty, the size its
    sidecar's ``n_written`` says, a slot-file header that is whole, and no more tokens than
    the slot's context. Returns the fresh entry; raises ``NotRestorable`` with a one-line
    message (the target slot keeps its cache, since nothing is sent).
    """
    filename = entry if isinstance(entry, str) else entry.filename
    check_filename(filename)
    st = store._lstat(filename)
    if st is None:
        raise NotRestorable(
            f"{filename} is not in the save directory {store.directory}. Nothing was loaded; "
            "pick another save."
        )
    if stat.S_ISLNK(st.st_mode) or not _is_regular(st.st_mode):
        raise NotRestorable(
            f"{filename} is a symbolic link or not a regular file; kvtui never loads those. "
            "Nothing was loaded: copy the save itself into the save directory."
        )
    fresh = store._refresh(filename)
    if fresh is None:
        raise NotRestorable(f"{filename} disappeared from {store.directory}. Nothing was loaded.")
    if fresh.problem is not None:
        raise NotRestorable(
            f"{filename} cannot be loaded: {fresh.problem}. Nothing was sent, so the slot "
            "keeps its cache; load an older save."
        )
    if n_ctx and fresh.n_tokens is not None and fresh.n_tokens > n_ctx:
        raise NotRestorable(
            f"{filename} holds {fresh.n_tokens:,} tokens, more than a slot's context of "
            f"{n_ctx:,}. Nothing was sent; restart llama-server with a larger -c (context is "
            "split across -np slots) to load it."
        )
    return fresh


def rotate(
    store: SaveStore, chat: str, character: str, keep: int, *, protect: Collection[str] = ()
) -> list[str]:
    """Delete the oldest autosaves of (chat, character) beyond the newest ``keep``.

    Only sound saves count and are deleted: damaged files and leftovers never take a good
    save's place, and are never removed here. Tagged saves are never touched. The save most
    recently named or written for this pair (and anything in ``protect``) is always kept
    and counts towards ``keep``, even when other files carry later timestamps (the
    extension stamps names in local time). Returns the deleted names.
    """
    if keep < 0:
        raise ValueError("keep must be >= 0")
    store._fresh()
    chat_key, character_key = normalize(chat), normalize(character)
    protected = set(protect)
    with store._lock:
        if (recent := store._recent.get((chat_key, character_key))) is not None:
            protected.add(recent)
    autosaves = [
        e
        for e in store.entries()
        if e.parsed
        and e.tag is None
        and e.chat_key == chat_key
        and e.character_key == character_key
    ]
    room = keep - sum(1 for e in autosaves if e.filename in protected)
    deleted: list[str] = []
    for entry in autosaves:
        if entry.filename in protected:
            continue
        if room > 0:
            room -= 1
            continue
        with contextlib.suppress(OSError):
            store.delete(entry.filename)
            deleted.append(entry.filename)
    return deleted


def pick_restorable(
    store: SaveStore,
    chat: str,
    character: str,
    n_ctx: int | None = None,
    *,
    prompt_text: str | None = None,
    min_shared: float = 0.5,
) -> tuple[SaveEntry | None, list[str]]:
    """The newest save of (chat, character) that passes ``check_restorable``, and one note per
    newer file passed over (damaged, too big for the slot, or — with ``prompt_text`` — holding
    a prompt that shares less than ``min_shared`` of its fingerprint with this one).

    Autoload's choice: an older good save wins over a broken newest one, and the user is told.
    """
    store.ensure_fresh()
    chat_key, character_key = normalize(chat), normalize(character)
    notes: list[str] = []
    for entry in store.entries(include_damaged=True):
        if entry.chat_key != chat_key or entry.character_key != character_key:
            continue
        try:
            fresh = check_restorable(store, entry, n_ctx)
        except NotRestorable as err:
            notes.append(f"Passed over {entry.filename}: {err.args[0].split('. Nothing')[0]}.")
            continue
        fp = fresh.meta.prompt_fingerprint() if fresh.meta is not None else None
        if prompt_text is not None and fp is not None and fp.length:
            shared = fp.common_prefix_chars(prompt_text)
            if shared < min_shared * fp.length:
                notes.append(
                    f"Passed over {entry.filename}: it holds a different conversation (its "
                    f"prompt shares {shared:,} of {fp.length:,} characters with this one)."
                )
                continue
        return fresh, notes
    return None, notes
