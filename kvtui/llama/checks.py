"""Checks made before llama-server sees a request, for the mistakes the server does not catch.

The server wraps slot ids modulo its slot count (slot 99 of 4 is slot 3, and a save there
overwrites the named file), and only rejects bad file names after the fact. Both are refused here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kvtui.llama.errors import InvalidFilename, SlotOutOfRange

_FORBIDDEN = frozenset('/\\:*?"<>|\x7f\ufffd\ufeff\uff0e\u2215\u2216')
"""Characters llama-server's ``fs_validate_filename`` refuses (with separators and look-alikes)."""


def filename_problem(name: str) -> str | None:
    """Why llama-server would refuse ``name`` as a save file name (None if it is a plain name).

    Mirrors the server's own check, so a bad name never reaches it: not empty, at most 255 bytes,
    no path separators, control characters or ``:*?"<>|``, no ``..``, not ``.``, no leading or
    trailing space, no trailing dot. Unicode letters are fine.
    """
    if not isinstance(name, str) or not name:
        return "it is empty"
    if len(name.encode("utf-8", "surrogatepass")) > 255:
        return "it is longer than 255 bytes"
    for char in name:
        code = ord(char)
        if char in "/\\":
            return "it contains a path separator"
        if code < 0x20 or 0x80 <= code <= 0x9F or 0xD800 <= code <= 0xDFFF or char in _FORBIDDEN:
            return f"it contains the character {char!r}"
    if ".." in name or name == ".":
        return "it contains '..' or is '.'"
    if name[0] == " " or name[-1] in " .":
        return "it starts or ends with a space, or ends with a dot"
    return None


def check_filename(name: str) -> None:
    """Raise ``InvalidFilename`` unless ``name`` is a plain file name."""
    problem = filename_problem(name)
    if problem is not None:
        raise InvalidFilename(f"{name!r} is not a plain file name: {problem}.")


def slot_problem(slot: object, total_slots: int) -> str | None:
    """Why ``slot`` is not a slot id of a server with ``total_slots`` slots, or None.

    The one statement of the rule (the client, the slot book, the service and the proxy all ask
    it): ids are whole numbers from 0 to ``total_slots - 1``. The answer is a lower-case clause
    without a full stop, to be quoted; :func:`slot_sentence` makes a sentence of it.
    """
    if isinstance(slot, bool) or not isinstance(slot, int):
        return f"slot id {slot!r} is not a whole number"
    if 0 <= slot < total_slots:
        return None
    if total_slots <= 0:
        return f"slot {slot} does not exist: the server reports no slots"
    slots = "1 slot" if total_slots == 1 else f"{total_slots} slots"
    return f"slot {slot} does not exist: the server has {slots}, 0 to {total_slots - 1}"


def slot_sentence(problem: str) -> str:
    """``problem`` (from :func:`slot_problem`) as a sentence."""
    return f"{problem[:1].upper()}{problem[1:]}."


def check_slot(slot: int, total_slots: int, url: str) -> None:
    """Raise ``SlotOutOfRange`` unless ``0 <= slot < total_slots`` (see :func:`slot_problem`)."""
    problem = slot_problem(slot, total_slots)
    if problem is None:
        return
    if isinstance(slot, bool) or not isinstance(slot, int):
        hint = "Give a slot id such as 0 or 1."
    elif total_slots <= 0:
        hint = f"llama-server at {url} has none: restart it with -np N (one slot per character)."
    else:
        wrapped = (slot % 2**64) % total_slots  # what the server does: to size_t, then modulo
        hint = (
            f"Use a slot id from 0 to {total_slots - 1}. Nothing was sent to llama-server at "
            f"{url} (it would silently have used slot {wrapped} instead, overwriting files)."
        )
    raise SlotOutOfRange(slot_sentence(problem), hint)


def regular_file(path: Path) -> bool:
    """A regular file, not a symlink (llama-server would follow one out of its directory)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False
