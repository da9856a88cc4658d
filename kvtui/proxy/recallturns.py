"""Recall's part of a turn's accounting: the prompt the server was really sent, and one line.

The router reads a request's prompt before recall replaces its macros; the warmth ledger must
compare what the server was sent (an injection that moved is what busts the cached prefix).
:class:`RecallTurns` swaps in the injected prompt, maps the character's previous prompt to the
one that was sent, and hands the ledger recall's telemetry with the injection's span in this
prompt and in the previous one (:mod:`kvtui.recall.telemetry`). When the turn is booked it says
in one event-log line what recall did and what it cost.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from kvtui.events import EventLog, Kind
from kvtui.proxy.gentype import request_prompt
from kvtui.recall import RecallOutcome
from kvtui.recall.macro import replace_macros
from kvtui.recall.telemetry import Span, describe, injection_span, turn_entry
from kvtui.slots import GenType
from kvtui.warmth import TurnTicket, WarmthLedger

log = logging.getLogger("kvtui.proxy")

Key = tuple[str, str]
_SIDE = frozenset({GenType.QUIET, GenType.IMPERSONATE})  # the ledger does not remember them
_REMEMBERED = 256


@dataclass(frozen=True)
class Pending:
    """A request recall looked at, between :meth:`before_forward` and the ledger's begin."""

    key: Key
    written: dict[str, Any]  # the body as the client wrote it (with its macros)
    outcome: RecallOutcome


@dataclass(frozen=True)
class Turn:
    """What the ledger is given for one turn."""

    prompt: str | None
    previous_prompt: str | None
    recall: dict[str, Any] | None


@dataclass(frozen=True)
class _Sent:
    written: str
    sent: str
    span: Span | None


class RecallTurns:
    """Per (chat, character): the last prompt as written and as sent, and its injection."""

    def __init__(self) -> None:
        self._last: OrderedDict[Key, _Sent] = OrderedDict()

    def begin(
        self,
        key: Key,
        gen_type: GenType,
        prompt: str | None,
        previous_prompt: str | None,
        pending: Pending | None,
    ) -> Turn:
        last = self._last.get(key)
        if last is not None and previous_prompt == last.written:
            previous_prompt = last.sent
        sent, span, entry = prompt, None, None
        if pending is not None and pending.key == key:
            if prompt is not None:
                sent = _sent_prompt(pending, prompt)
                span = _span(pending, prompt, sent)
            entry = turn_entry(pending.outcome.telemetry, span, last.span if last else None)
        if prompt is not None and sent is not None and gen_type not in _SIDE:
            self._last.pop(key, None)
            self._last[key] = _Sent(prompt, sent, span)
            while len(self._last) > _REMEMBERED:
                self._last.popitem(last=False)
        return Turn(sent, previous_prompt, entry)

    def last_sent(self, key: Key) -> str | None:
        """The prompt text last sent for ``key`` (its injections in it)."""
        last = self._last.get(key)
        return last.sent if last is not None else None

    def refreshed(self, key: Key, prompt: str, expected: str | None) -> None:
        """The slot was refreshed (:mod:`kvtui.proxy.recallrefresh`) after the turn whose sent
        prompt was ``expected``: the next turn is compared with ``prompt``, which holds no
        injection (unless another turn of the character began meanwhile)."""
        last = self._last.get(key)
        if last is not None and last.sent == expected:
            self._last[key] = _Sent(last.written, prompt, None)

    def report(
        self,
        ledger: WarmthLedger,
        ticket: TurnTicket,
        task: asyncio.Task[None] | None,
        events: EventLog,
    ) -> None:
        """Say what recall did in this turn, with its cost once the ledger has booked it."""
        d = ticket.decision
        when = ticket.begun.isoformat()

        def emit(_done: object = None) -> None:
            entry = ticket.recall or {}
            for record in reversed(ledger.records()):
                if (record.ts, record.chat, record.character) == (when, d.chat, d.character):
                    entry = record.recall or entry
                    break
            line = describe(d.character, entry)
            log.info("%s", line)
            events.info(Kind.ROUTE, line)

        if task is None:
            emit()
        else:
            task.add_done_callback(emit)


def _sent_prompt(pending: Pending, prompt: str) -> str:
    """``prompt`` (the router's text of the written body) as it reads after injection."""
    sent_body = pending.outcome.body
    if sent_body is pending.written:
        return prompt
    if isinstance(sent_body.get("prompt"), str | list):
        return request_prompt(sent_body) or prompt
    if request_prompt(pending.written) == prompt:  # rendered the same way: render what was sent
        return request_prompt(sent_body) or prompt
    return str(replace_macros({"prompt": prompt}, pending.outcome.values).body["prompt"])


def _span(pending: Pending, prompt: str, sent: str) -> Span | None:
    """This turn's recall in ``sent``: where the engine put it in a text prompt (earlier
    turns' recall kept in the prompt is not part of it), else where the prompts differ."""
    t, text = pending.outcome.telemetry, pending.outcome.text
    if isinstance(pending.outcome.body.get("prompt"), str) and t.position is not None:
        return t.position, t.position + t.chars
    at = sent.rfind(text) if text else -1  # messages: the rendering's last copy of it
    return (at, at + len(text)) if at >= 0 else injection_span(prompt, sent)
