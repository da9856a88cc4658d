"""Keeping each turn's recall where the model read it (``recall_keep_in_history``).

A macro near the end of the prompt (an Author's Note at depth 0 or 1) moves down with the chat:
the recall injected for the last turn sat between the user's message and the reply the model
wrote after it, and the next turn's prompt no longer has it there. The cache holds the old
prompt *and the reply*, so the first change is where that recall was: the reply, and everything
after it, is prefilled again every turn.

With ``keep_in_history`` each turn's recall stays in the prompt where it was injected, as a
*pin*: an offset in the **base prompt** (the prompt with the per-turn macro removed, so no kvtui
text) with the hash of the base text before it, the text inserted there, and the memories it
shows. A pin is kept while the base prompt still begins with the same text up to its offset (an
edit, a deletion, SillyTavern trimming the top of the context all drop it and every pin after it)
and while it lies before the macro's current position (a swipe, a regenerate or a continue
injects at the same place: the current recall replaces it). Memories a kept pin shows are left
out of the new recall, so a memory is shown once. Pins are bounded by ``keep_budget`` tokens: once
they fill it, a new turn's recall is injected but not kept (it then costs what it costs without
this setting); SillyTavern trimming the top of a full context drops them all. Text completion
prompts (offsets in characters) and Chat Completion messages where the macro is a message of its
own, such as SillyTavern's Author's Note in chat (offsets in messages).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kvtui.recall.macro import replace_macros
from kvtui.recall.select import TokenCounter

SENTINEL = "\ufffe"
"""Stands for the recall text to find where the macro lands in the base prompt."""


@dataclass(frozen=True)
class Pin:
    """A recall kept in the prompt where an earlier turn injected it."""

    offset: int  # characters of the base prompt before it
    digest: str  # hash of those characters
    text: str  # what is inserted there
    ids: tuple[str, ...] = ()  # the memories it shows

    def to_json(self) -> dict[str, Any]:
        return {"offset": self.offset, "digest": self.digest, "text": self.text, "ids": [*self.ids]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Pin | None:
        try:
            return cls(
                int(data["offset"]),
                str(data["digest"]),
                str(data["text"]),
                tuple(str(i) for i in data.get("ids", [])),
            )
        except (KeyError, TypeError, ValueError):
            return None


def digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:20]


def insertion(base: str, sent: str, offset: int) -> str | None:
    """The text ``sent`` holds at ``offset`` that ``base`` does not (``None`` when ``sent`` is
    not ``base`` with one insertion there)."""
    n = len(sent) - len(base)
    if n < 0 or not 0 <= offset <= len(base):
        return None
    text = sent[offset : offset + n]
    if sent[:offset] != base[:offset] or sent[offset + n :] != base[offset:]:
        return None
    return text


def macro_offset(base: str, marked: str) -> int | None:
    """Where the macro sits in ``base``: ``marked`` is the prompt with the macro replaced by
    :data:`SENTINEL` (only the first one counts)."""
    at = marked.find(SENTINEL)
    if at < 0 or marked[:at] != base[:at]:
        return None
    return at


def prefix_digest(base: str | list[Any], offset: int) -> str:
    """The hash of what comes before ``offset``: characters of a prompt, or messages."""
    if isinstance(base, str):
        return digest(base[:offset])
    return digest(json.dumps(base[:offset], ensure_ascii=False, sort_keys=True))


def kept(pins: Sequence[Pin], base: str | list[Any], offset: int) -> list[Pin]:
    """The pins still valid for ``base`` whose recall must stay, the macro being at ``offset``."""
    out: list[Pin] = []
    for pin in sorted(pins, key=lambda p: p.offset):
        stale = pin.offset > len(base) or prefix_digest(base, pin.offset) != pin.digest
        if pin.offset >= offset or stale:
            break  # an earlier text changed: this pin and every later one are gone
        out.append(pin)
    return out


def within_budget(pins: Sequence[Pin], budget: int, count: TokenCounter) -> list[Pin]:
    """The newest pins that fit ``budget`` tokens (the oldest go first)."""
    out: list[Pin] = []
    left = budget
    for pin in reversed(pins):
        cost = count(pin.text)
        if cost > left:
            break
        out.append(pin)
        left -= cost
    out.reverse()
    return out


def build(base: str, pins: Sequence[Pin]) -> str:
    """``base`` with every pin's text inserted at its offset (pins sorted by offset)."""
    parts: list[str] = []
    at = 0
    for pin in sorted(pins, key=lambda p: p.offset):
        parts += [base[at : pin.offset], pin.text]
        at = pin.offset
    parts.append(base[at:])
    return "".join(parts)


@dataclass(frozen=True)
class Plan:
    """Where this turn's recall goes in the base prompt (a text prompt's characters, or a
    message list: the recall is then a message of its own), and the pins kept before it."""

    base: str | list[Any]
    offset: int
    kept: tuple[Pin, ...]

    @property
    def ids(self) -> set[str]:
        return {i for pin in self.kept for i in pin.ids}


def plan(
    body: Mapping[str, Any],
    values: Mapping[str, str],
    macro: str,
    pins: Sequence[Pin],
    budget: int,
    count: TokenCounter,
) -> Plan | None:
    """The plan for ``body`` (``values``: the other macros' texts), or ``None`` when neither
    its prompt is one string holding the macro nor one of its messages is the macro alone."""
    field = "prompt" if isinstance(body.get("prompt"), str) else "messages"
    base = replace_macros(body, {**values, macro: ""}).body.get(field)
    marked = replace_macros(body, {**values, macro: SENTINEL}).body.get(field)
    offset: int | None = None
    if isinstance(base, str) and isinstance(marked, str):
        offset = macro_offset(base, marked)
    elif isinstance(base, list) and isinstance(marked, list):
        offset = _message_offset(base, marked)
    if offset is None or base is None:
        return None
    return Plan(base, offset, tuple(within_budget(kept(pins, base, offset), budget, count)))


def _message_offset(base: list[Any], marked: list[Any]) -> int | None:
    """The index of the message that is the macro alone (an Author's Note as its own system
    message), when the list is ``base`` with that one message more."""
    if len(marked) != len(base) + 1:
        return None
    for i, message in enumerate(marked):
        if isinstance(message, Mapping) and message.get("content") == SENTINEL:
            return i if marked[:i] == base[:i] and marked[i + 1 :] == base[i:] else None
    return None


def finish(
    p: Plan,
    body: Mapping[str, Any],
    text: str,
    ids: Sequence[str],
    budget: int,
    count: TokenCounter,
) -> tuple[dict[str, Any], tuple[Pin, ...], int | None]:
    """``body`` (the request with this turn's recall injected) with the kept pins put back,
    the pins to keep for the next turn (this turn's recall among them while they fit
    ``budget`` tokens: once full, a new recall is not kept — dropping old ones would re-prefill
    the chat from the first of them), and where ``text`` starts in a text prompt."""
    if isinstance(p.base, str):
        sent = body.get("prompt")
        inserted = insertion(p.base, sent, p.offset) if isinstance(sent, str) else None
    else:
        inserted = _inserted_message(p.base, body.get("messages"), p.offset)
    if inserted is None:  # not one insertion at the macro: send it as it is, keep nothing
        return dict(body), (), None
    current = Pin(p.offset, prefix_digest(p.base, p.offset), inserted, tuple(ids))
    pins = (*p.kept, current) if inserted else p.kept
    used = sum(count(pin.text) for pin in p.kept)
    fits = bool(inserted) and used + count(inserted) <= budget
    position: int | None = None
    if isinstance(p.base, str):
        before = sum(len(pin.text) for pin in p.kept)
        position = p.offset + before + max(inserted.find(text), 0) if text else None
    return with_pins(body, p.base, pins), (*p.kept, current) if fits else p.kept, position


def with_pins(
    body: Mapping[str, Any], base: str | list[Any], pins: Sequence[Pin]
) -> dict[str, Any]:
    """``body`` whose prompt (or messages) is ``base`` with ``pins`` put back."""
    if isinstance(base, str):
        return {**body, "prompt": build(base, pins)}
    messages = list(base)
    for pin in sorted(pins, key=lambda q: q.offset, reverse=True):
        messages.insert(pin.offset, json.loads(pin.text))
    return {**body, "messages": messages}


def _inserted_message(base: list[Any], sent: object, offset: int) -> str | None:
    """The JSON of the one message ``sent`` holds at ``offset`` that ``base`` does not ("" when
    nothing was inserted)."""
    if not isinstance(sent, list):
        return None
    if sent == base:
        return ""
    if len(sent) != len(base) + 1 or sent[:offset] != base[:offset]:
        return None
    if sent[offset + 1 :] != base[offset:]:
        return None
    return json.dumps(sent[offset], ensure_ascii=False, sort_keys=True)
