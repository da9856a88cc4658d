"""Recall's per-turn telemetry: where an injection landed, the ledger entry, the dashboard line.

The proxy books each injected turn in the warmth ledger (``turns.jsonl``, the record's
``recall`` object). :func:`injection_span` finds where kvtui's injection sits in the prompt the
server was sent (the first and last character that differ from the prompt as the client wrote
it); :func:`turn_entry` is the JSON the proxy hands the ledger, with this turn's span and the
previous turn's; the ledger adds what the accounting knows (``position``, ``tokens`` injected,
``lost_tokens``: the cached prefix lost because the first change of the prompt lies in the
previous turn's injection, ``cost_tokens``: those plus the injection's own tokens when they were
prefilled). :func:`describe` is the one line the dashboard's event log and ``kvtui proxy`` show.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kvtui.recall.outcome import RecallTelemetry

Span = tuple[int, int]


def _common_prefix(a: str, b: str, block: int = 4096) -> int:
    end = min(len(a), len(b))
    start = 0
    while start < end and a[start : start + block] == b[start : start + block]:
        start += block
    if start >= end:
        return end
    low, high = start, min(start + block, end)
    while low < high:
        mid = (low + high + 1) // 2
        if a[start:mid] == b[start:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def injection_span(before: str, after: str) -> Span | None:
    """Where ``after`` (the prompt sent) differs from ``before`` (the prompt as written, with
    its macros): ``(start, end)`` in ``after``; ``None`` when they are the same text."""
    if before == after:
        return None
    start = _common_prefix(before, after)
    limit = min(len(before), len(after)) - start
    suffix = _common_prefix(before[::-1][:limit], after[::-1][:limit])
    return start, max(start, len(after) - suffix)


def turn_entry(
    telemetry: RecallTelemetry, span: Span | None, previous_span: Span | None
) -> dict[str, Any]:
    """The ``recall`` object of a turn record, before the ledger's accounting fills it in.

    Never the memories' text: ``turns.jsonl`` names chats and characters, not what they say.
    """
    t = telemetry
    entry: dict[str, Any] = {"macro": t.macro}
    if t.decision is not None:
        entry.update(
            decision=t.decision.value,
            reason=t.reason,
            memories=len(t.memory_ids),
            chars=t.chars,
            changed=t.changed,
        )
    if t.longterm_batch is not None:
        entry.update(
            longterm_batch=t.longterm_batch,
            longterm_chars=t.longterm_chars,
            longterm_changed=t.longterm_changed,
        )
    if t.warnings:
        entry["warnings"] = list(t.warnings)
    if span is not None:
        entry["span"] = list(span)
    if previous_span is not None:
        entry["previous_span"] = list(previous_span)
    return entry


def describe(character: str, entry: Mapping[str, Any]) -> str:
    """One line for the event log, e.g. ``recall Seraphina: computed (a new user message) ·
    3 memories, 212 chars (61 tok) · cost 61 tok (0 cached lost)``."""
    decision = entry.get("decision")
    if not decision:
        what = {
            "malformed": "malformed macro left as written",
            "token_ids": "token-id prompt: nothing injected",
            "disabled": "recall is off: macro left as written",
            "error": "failed, request sent as is",
        }.get(str(entry.get("macro")), str(entry.get("macro")))
        return f"recall {character}: {what}"
    parts = [f"recall {character}: {decision} ({entry.get('reason', '')})"]
    chars = int(entry.get("chars") or 0)
    tokens = entry.get("tokens")
    size = f"{chars:,} chars" + (f" ({tokens:,} tok)" if isinstance(tokens, int) else "")
    memories = int(entry.get("memories") or 0)
    parts.append(f"{memories} memor{'y' if memories == 1 else 'ies'}, {size}" if chars else "empty")
    if entry.get("longterm_batch") is not None:
        changed = " (rebuilt)" if entry.get("longterm_changed") else ""
        parts.append(
            f"long-term batch {entry['longterm_batch']}: {entry.get('longterm_chars', 0):,} "
            f"chars{changed}"
        )
    cost = entry.get("cost_tokens")
    if isinstance(cost, int):
        parts.append(f"cost {cost:,} tok ({int(entry.get('lost_tokens') or 0):,} cached lost)")
    return " · ".join(parts)
