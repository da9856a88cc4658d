"""Checks made before llama-server sees a request, for the mistakes the server does not catch.

The server wraps slot ids modulo its slot count (slot 99 of 4 is slot 3, and a save there
overwrites the named file), and only rejects bad file names after the fact. Both are refused here.
"""

from __future__ import annotations

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


def check_slot(slot: int, total_slots: int, url: str) -> None:
    """Raise ``SlotOutOfRange`` unless ``0 <= slot < total_slots``."""
    if isinstance(slot, bool) or not isinstance(slot, int):
        raise SlotOutOfRange(
            f"Slot id {slot!r} is not a whole number.", "Give a slot id such as 0 or 1."
        )
    if 0 <= slot < total_slots:
        return
    if total_slots <= 0:
        raise SlotOutOfRange(
            f"llama-server at {url} reports no slots, so slot {slot} does not exist.",
            "Restart llama-server with -np N (one slot per character to keep warm).",
        )
    wrapped = (slot % 2**64) % total_slots  # what the server would do: to size_t, then modulo
    raise SlotOutOfRange(
        f"Slot {slot} does not exist: llama-server at {url} has {total_slots} slot(s), "
        f"0 to {total_slots - 1}.",
        f"Use a slot id from 0 to {total_slots - 1}. Nothing was sent (llama-server would "
        f"silently have used slot {wrapped} instead, overwriting files).",
    )
