"""What a turn's recall injection cost the cached prompt, from the turn's accounting.

The proxy hands the ledger recall's telemetry (``kvtui.recall.telemetry.turn_entry``) with the
injection's span in this prompt and in the character's previous one. :func:`recall_cost` turns
the spans into figures: ``position`` (the injection's first character), ``tokens`` (its size),
``lost_tokens`` (the cached prefix lost because the prompt's first change lies inside the
previous turn's injection: it moved or changed) and ``cost_tokens`` (those plus the injection's
own tokens that were prefilled: those at or after the first change).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kvtui.warmth.accounting import Split
from kvtui.warmth.model import Reason


async def recall_cost(
    recall: Mapping[str, Any] | None,
    split: Split,
    prompt: str | None,
    total: int,
    tokenize: Callable[..., Awaitable[list[int]]] | None,
) -> dict[str, Any] | None:
    """The ``recall`` object of the turn record (``None`` when recall did not look at it)."""
    if recall is None:
        return None
    entry = dict(recall)
    span, before = entry.pop("span", None), entry.pop("previous_span", None)
    diff = split.first_diff
    lost = 0
    if _is_span(before) and diff is not None and before[0] <= diff < before[1]:
        lost = split.losses.get(Reason.PROMPT_CHANGED_EARLY.value, 0)
    entry["lost_tokens"] = lost
    if not _is_span(span) or prompt is None:
        entry["cost_tokens"] = lost
        return entry
    start, end = int(span[0]), int(span[1])
    tokens = await _count(prompt[start:end], total, len(prompt), tokenize)
    cut = start if diff is None else max(start, diff)  # the part at or after the first change
    fresh = tokens if cut == start else await _count(prompt[cut:end], total, len(prompt), tokenize)
    entry.update(position=start, tokens=tokens, cost_tokens=lost + fresh)
    return entry


def _is_span(value: object) -> bool:
    return isinstance(value, list | tuple) and len(value) == 2


async def _count(
    text: str, total: int, chars: int, tokenize: Callable[..., Awaitable[list[int]]] | None
) -> int:
    """Tokens of ``text`` alone (no BOS); estimated from the prompt's ratio without a
    tokenizer."""
    if not text:
        return 0
    if tokenize is not None:
        try:
            return len(await tokenize(text, add_special=False))
        except Exception:  # the tokenizer is optional: estimate instead
            pass
    return round(total * len(text) / max(1, chars))
