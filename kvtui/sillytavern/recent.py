"""The latest messages of a chat file, and the line keys that find them in a prompt.

A chat's messages are indexed by their lines (each at least :data:`MIN_KEY` characters, also
without a ``Name:`` prefix); a prompt's lines are looked up the same way, also without instruct
markup and with up to two ``Name:`` prefixes removed (a 1.19 continue renders
``Name:Name: text``). Only the end of a chat file is read (:func:`read_recent`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvtui.sillytavern.chatfile import is_header
from kvtui.sillytavern.names import strip_name_prefix

RECENT = 8
"""How many of each chat's latest visible messages are indexed."""
MIN_KEY = 8
"""Shorter lines are not indexed (``*smiles*``, ``Yes.``: too common to tell chats apart)."""
SCAN_CHARS = 40_000
"""How much of a prompt's end is looked at at most (the latest messages are at the end)."""
SCAN_LINES = 160
"""Lines looked at before the first hit, at most (the latest messages are at the end)."""
MISS_RUN = 48
"""After a hit, this many lines in a row without one end the scan (older history)."""

_TAIL_BYTES = 64 * 1024
_MARKUP = re.compile(
    r"<\|[^|>\n]{1,40}\|>|\[/?INST\]|</?s>|<(?:start|end)_of_turn>(?:model|user)?"
    r"|<[|｜][A-Za-z]{1,12}[|｜]>|^#{2,3}\s*[A-Za-z ]{1,20}:?"
)


@dataclass(frozen=True)
class RecentMessage:
    """One of a chat's latest visible messages, as indexed."""

    name: str
    is_user: bool
    text: str
    avatar: str | None = None
    keys: frozenset[str] = frozenset()

    @property
    def indexable(self) -> bool:
        return bool(self.keys)


def line_keys(text: str) -> frozenset[str]:
    """The lookup keys of a message: each long-enough line, also without a ``Name:`` prefix."""
    keys: set[str] = set()
    for line in text.split("\n"):
        s = line.strip()
        if len(s) >= MIN_KEY:
            keys.add(s)
            bare = strip_name_prefix(s).strip()
            if bare != s and len(bare) >= MIN_KEY:
                keys.add(bare)
    return frozenset(keys)


def line_variants(line: str) -> list[str]:
    """The keys one prompt line may match: as is, without instruct markup, without up to two
    ``Name:`` prefixes (a 1.19 continue renders ``Name:Name: text``)."""
    s = line.strip()
    if len(s) < MIN_KEY:
        return []
    out = [s]
    if "<" in s or "[" in s or "#" in s:
        s = _MARKUP.sub("", s).strip()
        if len(s) >= MIN_KEY and s != out[0]:
            out.append(s)
    for _ in range(2):
        colon = s.find(":", 0, 66)
        if colon < 0:
            break
        bare = strip_name_prefix(s).strip()
        if bare == s:
            break
        s = bare
        if len(s) >= MIN_KEY:
            out.append(s)
    return out


def prompt_keys(text: str) -> Iterator[list[str]]:
    """The key variants of each line of a prompt's end, newest line first (at most
    :data:`SCAN_CHARS`)."""
    end = len(text)
    floor = max(end - SCAN_CHARS, 0)
    while end > floor:
        start = text.rfind("\n", floor, end)
        yield line_variants(text[start + 1 : end])
        if start < 0:
            return
        end = start


def _message(obj: Mapping[str, Any]) -> RecentMessage | None:
    if obj.get("is_system"):
        return None  # hidden from the prompt
    text = obj.get("mes")
    text = text if isinstance(text, str) else ""
    name = obj.get("name")
    avatar = obj.get("original_avatar")
    return RecentMessage(
        name=name if isinstance(name, str) else "",
        is_user=bool(obj.get("is_user")),
        text=text,
        avatar=avatar if isinstance(avatar, str) and avatar else None,
        keys=line_keys(text),
    )


def read_recent(path: Path, count: int = RECENT) -> tuple[RecentMessage, ...]:
    """The last ``count`` visible messages of a chat file, reading only as much of its end as
    needed. Raises ``OSError`` when the file cannot be read."""
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        want = _TAIL_BYTES
        while True:
            start = max(size - want, 0)
            f.seek(start)
            raw = f.read()
            lines = raw.split(b"\n")
            if start > 0:
                lines = lines[1:]  # cut mid-line
            found: list[RecentMessage] = []
            for number in range(len(lines) - 1, -1, -1):
                line = lines[number].strip()
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                except (UnicodeDecodeError, ValueError):
                    continue
                if not isinstance(obj, dict) or (start == 0 and number == 0 and is_header(obj)):
                    continue
                if (message := _message(obj)) is not None:
                    found.append(message)
                    if len(found) >= count:
                        break
            if len(found) >= count or start == 0:
                return tuple(reversed(found))
            want *= 4
