"""The one pattern for a SillyTavern speaker name, and the ``Name:`` patterns built from it.

SillyTavern renders chat lines as ``Name: text`` (text completion, and message contents in
Chat Completion groups), asks for a reply with a ``\\nName:`` tail, and stops on ``\\nName:``.
Every module that reads such names uses :data:`NAME` (through the patterns below), so what
counts as a name is decided in this one place: up to 64 characters with no line break, colon,
bracket, angle bracket, pipe, ``#``, ``*``, brace or double quote (those belong to instruct
sequences, markdown or macros, not names).
"""

from __future__ import annotations

import re
from collections.abc import Collection

NAME = r"[^\n:\[\]<>|｜#*{}\"]{1,64}"
"""A speaker name, as a regular-expression fragment (no groups)."""

SPEAKER_LINE = re.compile(rf"(?:^|\n)[ \t]*({NAME}):", re.MULTILINE)
"""A ``Name:`` at the start of a line; group 1 is the name (untrimmed)."""

NAME_PREFIX = re.compile(rf"({NAME}):\s")
"""A ``Name: `` at the start of a message's content (use ``match``); group 1 is the name."""

NAME_TAIL = re.compile(rf"(?P<name>{NAME}):[ \t]*\Z")
"""A ``Name:`` reply request at the very end of a prompt; group ``name`` is the name."""

RERENDERED_PREFIX = re.compile(rf"({NAME}):(?=\1:\s)")
"""SillyTavern 1.19's continue: the old ``Name:`` tail glued to the re-rendered ``Name: text``."""

STOP_NAME = re.compile(rf"\A\n({NAME}):\Z")
"""A SillyTavern name stop string, exactly ``\\nName:``; group 1 is the name."""

NEXT_SPEAKER = re.compile(rf"\n{NAME}:")
"""The start of the next ``Name:`` line inside a history."""


def strip_name_prefix(text: str, names: Collection[str] = ()) -> str:
    """``text`` without a leading ``Name: `` (only a name in ``names``, when it is given).

    A glued ``Name:Name: `` (a 1.19 continue) loses its first ``Name:``; call again for the
    second.
    """
    m = NAME_PREFIX.match(text) or RERENDERED_PREFIX.match(text)
    if m is None or (names and m.group(1).strip() not in names):
        return text
    return text[m.end() :]
