"""The recall macros in a generation request: finding them and replacing them (pure functions).

A macro is **well-formed** when it is exactly two opening braces, the name, two closing braces:
``{{kvtui_memories}}``. Like SillyTavern's own macros the name is matched case-insensitively and
spaces inside the braces are allowed (``{{ kvtui_memories }}``), because a user who typed that
clearly meant the macro. Anything else around the name — ``{{kvtui_memories}``,
``{kvtui_memories}}``, ``{{{kvtui_memories}}}`` — is **malformed**: it is reported (so the
dashboard can say what to fix) and left exactly as it is, never guessed at. The bare word
``kvtui_memories`` without braces is ordinary text.

Where macros are looked for: a text-completion ``prompt`` (a string, or the strings of a batch
list; token ids are left alone) and every chat-completion ``messages[*].content`` (a string, or
the ``text`` of each part of a content list).

Replacement with empty text removes the macro *cleanly*: a macro alone on its line takes the line
(and one line break) with it, and a chat message (or content part) that held nothing but the macro
is dropped. So a request whose macro has nothing to show is byte-identical to the same request
written without the macro line — which is what SillyTavern sends for an empty Author's Note.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@functools.lru_cache(maxsize=64)
def _well_formed(name: str) -> re.Pattern[str]:
    return re.compile(r"(?<!\{)\{\{[ \t]*" + re.escape(name) + r"[ \t]*\}\}(?!\})", re.IGNORECASE)


@functools.lru_cache(maxsize=64)
def _any_braced(name: str) -> re.Pattern[str]:
    # the name with at least one brace next to it (spaces allowed between)
    n = re.escape(name)
    return re.compile(r"\{+[ \t]*" + n + r"[ \t]*\}*|\{*[ \t]*" + n + r"[ \t]*\}+", re.IGNORECASE)


@dataclass(frozen=True)
class MacroScan:
    """Which macros a request holds."""

    found: frozenset[str] = frozenset()  # names with at least one well-formed macro
    malformed: tuple[str, ...] = ()  # the malformed spellings seen, as written

    def has(self, name: str) -> bool:
        return name in self.found


@dataclass(frozen=True)
class Placement:
    """Where the first injection of a macro landed in the forwarded request."""

    name: str
    position: int  # characters before it in the request's text (see :func:`request_texts`)
    length: int  # characters injected there
    total: int  # characters of the whole request text after injection

    @property
    def chars_after(self) -> int:
        """Prompt characters after the injection: what re-prefills when it changes."""
        return max(self.total - self.position - self.length, 0)


@dataclass
class Replaced:
    """The result of :func:`replace_macros`."""

    body: dict[str, Any]
    placements: dict[str, Placement] = field(default_factory=dict)
    changed: bool = False


def strings_of(body: Mapping[str, Any]) -> list[str]:
    """Every text of a request where macros can be (prompt strings, message contents)."""
    out: list[str] = []
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        out.append(prompt)
    elif isinstance(prompt, list):
        out.extend(p for p in prompt if isinstance(p, str))
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, Mapping):
                out.extend(_content_strings(message.get("content")))
    return out


def _content_strings(content: object) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            p["text"] for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        ]
    return []


def scan(body: Mapping[str, Any], names: Sequence[str]) -> MacroScan:
    """The well-formed and malformed macros of ``names`` in ``body``."""
    found: set[str] = set()
    malformed: list[str] = []
    texts = strings_of(body)
    for name in names:
        good, braced = _well_formed(name), _any_braced(name)
        for text in texts:
            if name.lower() not in text.lower():
                continue
            good_spans = [m.span() for m in good.finditer(text)]
            if good_spans:
                found.add(name)
            for m in braced.finditer(text):
                if not any(s <= m.start() and m.end() <= e for s, e in good_spans):
                    malformed.append(m.group(0))
    return MacroScan(frozenset(found), tuple(malformed))


def strip_macros(text: str, names: Sequence[str]) -> str:
    """``text`` without any well-formed macro of ``names`` (for hashing and keyword scans)."""
    for name in names:
        text = _remove(text, _well_formed(name))
    return text


def _remove(text: str, pattern: re.Pattern[str]) -> str:
    """Remove every match; a match alone on its line takes the line and one line break."""
    p = pattern.pattern
    flags = pattern.flags
    text = re.sub(r"\n[ \t]*(?:" + p + r")[ \t]*(?=\n|\Z)", "", text, flags=flags)
    text = re.sub(r"\A[ \t]*(?:" + p + r")[ \t]*(?:\n|\Z)", "", text, flags=flags)
    return pattern.sub("", text)


def _substitute(
    text: str, patterns: Mapping[str, re.Pattern[str]], values: Mapping[str, str]
) -> tuple[str, dict[str, tuple[int, int]]]:
    """``text`` with each macro replaced; the (position, length) of each name's first one."""
    for name, pattern in patterns.items():
        if values[name] == "":
            text = _remove(text, pattern)
    live = [(name, p) for name, p in patterns.items() if values[name] != ""]
    first: dict[str, tuple[int, int]] = {}
    if not live:
        return text, first
    groups = {f"m{i}": name for i, (name, _p) in enumerate(live)}
    combined = re.compile(
        "|".join(f"(?P<m{i}>{p.pattern})" for i, (_n, p) in enumerate(live)), re.IGNORECASE
    )
    delta = 0

    def put(m: re.Match[str]) -> str:
        nonlocal delta
        name = groups[str(m.lastgroup)]
        value = values[name]
        first.setdefault(name, (m.start() + delta, len(value)))
        delta += len(value) - (m.end() - m.start())
        return value

    return combined.sub(put, text), first


def replace_macros(body: Mapping[str, Any], values: Mapping[str, str]) -> Replaced:
    """A copy of ``body`` with each well-formed macro ``{{name}}`` replaced by ``values[name]``.

    ``body`` itself is never modified; parts without a macro are shared, not copied. Positions are
    measured in the request text of :func:`request_texts` (the prompt, or the message contents
    joined by line breaks) *after* replacement. Placements are recorded for the text actually
    injected; a macro replaced by nothing has no placement.
    """
    patterns = {name: _well_formed(name) for name in values}
    out = dict(body)
    pieces: list[_Piece] = []

    def take(text: str) -> _Piece:
        new, first = _substitute(text, patterns, values)
        piece = _Piece(new, first, new != text)
        pieces.append(piece)
        return piece

    prompt = body.get("prompt")
    if isinstance(prompt, str):
        out["prompt"] = take(prompt).text
    elif isinstance(prompt, list):
        out["prompt"] = [take(p).text if isinstance(p, str) else p for p in prompt]
    messages = body.get("messages")
    if isinstance(messages, list):
        out["messages"] = _replace_messages(messages, take)
    if not any(p.changed for p in pieces):
        return Replaced(dict(body))
    kept = [p for p in pieces if p.kept]
    found: dict[str, tuple[int, int]] = {}
    offset = 0
    for piece in kept:
        for name, (pos, length) in piece.first.items():
            found.setdefault(name, (offset + pos, length))
        offset += len(piece.text) + 1
    total = max(offset - 1, 0)
    placements = {n: Placement(n, pos, length, total) for n, (pos, length) in found.items()}
    return Replaced(out, placements, True)


@dataclass
class _Piece:
    text: str
    first: dict[str, tuple[int, int]]
    changed: bool
    kept: bool = True


def _replace_messages(messages: list[Any], take: Callable[[str], _Piece]) -> list[Any]:
    result: list[Any] = []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            piece = take(content)
            if not piece.changed:
                result.append(message)
            elif piece.text.strip() or not content.strip():
                result.append({**message, "content": piece.text})
            else:  # the message held only macros that came out empty: dropped
                piece.kept = False
        elif isinstance(content, list):
            parts: list[Any] = []
            for part in content:
                text = part.get("text") if isinstance(part, Mapping) else None
                if not isinstance(text, str):
                    parts.append(part)
                    continue
                piece = take(text)
                if not piece.changed:
                    parts.append(part)
                elif piece.text.strip() or not text.strip():
                    parts.append({**part, "text": piece.text})
                else:
                    piece.kept = False
            if parts == content:
                result.append(message)
            elif parts:
                result.append({**message, "content": parts})
        else:
            result.append(message)
    return result


def request_texts(body: Mapping[str, Any]) -> str:
    """The request's text as positions are measured: the prompt, or the contents joined."""
    return "\n".join(strings_of(body))
