"""How one turn's prefill splits into genuinely new tokens and lost ones, and why (pure logic).

For a turn whose character sent ``previous`` last time and ``prompt`` now, with the server's
``prompt_n`` (tokens evaluated) and ``cache_n`` (tokens reused):

- ``first_diff`` is the first character where ``prompt`` and ``previous`` differ.
- When ``prompt`` extends ``previous`` (the usual next turn, a swipe, a continue), everything up
  to ``previous``'s end was in the character's cache: ``ideal`` = its token count; the prompt's
  growth past it is *new*; whatever of ``ideal`` the server did not reuse is *lost*, for a
  routing reason (restart, chat switch, eviction without save, older save, no save, identity
  unsure, or the server's own choice).
- When ``prompt`` changed before ``previous``'s end (a changed system prompt, a lorebook entry,
  a trimmed context), the cache could only serve the common prefix: the tokens between that
  first difference and ``previous``'s end are lost as ``prompt_changed_early``; growth past
  ``previous``'s length is still new.

A shortfall of up to :data:`TAIL_SLACK` tokens is re-tokenisation at the boundary (new, not
lost). The server always evaluates at least one token, so the ideal reuse is at most
``total - 1``. By construction ``new + lost == prompt_n`` and the losses by reason sum to ``lost``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from kvtui.warmth.model import UNATTRIBUTED, UNSURE_SOURCES, Reason, TurnDecision

TAIL_SLACK = 3
"""A shortfall of at most this many tokens against the ideal is the previous prompt's last
characters tokenised differently once text follows them (``Kael:`` then ``Kael: Hello``): no
cache can reuse those, so they count as new, not lost."""

TokenCounter = Callable[[str], Awaitable[int | None]]
"""Token count of a text as a prompt (with BOS), or ``None`` when the server cannot say."""


def common_prefix(a: str, b: str, block: int = 4096) -> int:
    """Length of the longest common prefix of ``a`` and ``b``.

    Blocks are compared at C speed, then the first differing block is bisected, so a 64k
    prompt costs a few hundred kilobytes of copying, not a Python loop per character.
    """
    end = min(len(a), len(b))
    start = 0
    while start < end and a[start : start + block] == b[start : start + block]:
        start += block
    if start >= end:
        return end
    low, high = start, min(start + block, end)  # a[:low] == b[:low]; they differ before high
    while low < high:
        mid = (low + high + 1) // 2
        if a[start:mid] == b[start:mid]:
            low = mid
        else:
            high = mid - 1
    return low


_MESSAGE_START = re.compile(r"\n(?=[^\n:]{1,48}:)")
"""A text prompt's message starts: a line that begins with a speaker's name and a colon."""
_RECORD = "\x1e"  # a message start in kvtui.fingerprint.canonical_text of Chat Completion


def messages_between(text: str, start: int, end: int) -> int:
    """Messages of the chat ``text`` that begin in ``text[start:end]``.

    Chat Completion prompts (canonical text) mark each message; in a text prompt a message
    begins on a new line with ``Name:`` (SillyTavern's format), so a save whose prompt ended at
    ``start`` ("…\nKael:") and a cache that held up to ``end`` are that many messages apart.
    """
    start, end = max(0, start), min(len(text), end)
    if end <= start:
        return 0
    if _RECORD in text:
        return text.count(_RECORD, start, end)
    return sum(1 for _ in _MESSAGE_START.finditer(text, start, end))


@dataclass(frozen=True)
class Split:
    """The accounting of one turn (before it is dated and logged)."""

    new_tokens: int
    lost_tokens: int
    losses: dict[str, int]
    reason: str | None
    first_diff: int | None
    first_diff_tokens: int | None
    estimated: bool


def routing_reason(decision: TurnDecision, *, reusable: int, similar: bool) -> str | None:
    """Why the server did not reuse a prefix the character's cache could have held."""
    if not decision.facts_known:
        return None
    if similar or decision.source in UNSURE_SOURCES:
        return Reason.IDENTITY_UNSURE.value
    restored = decision.restored is not None
    if restored and decision.restored_tokens is not None and decision.restored_tokens < reusable:
        return Reason.OLDER_SAVE.value
    if not restored:
        if decision.chat_switched:
            return Reason.CHAT_SWITCH.value
        if decision.server_restarted:
            return Reason.SERVER_RESTART.value
        if decision.evicted_unsaved:
            return Reason.EVICTED_UNSAVED.value
        if not decision.resident and not decision.ram_cache_relied:
            return Reason.NO_SAVE.value
    return Reason.SERVER_CHOICE.value


async def split_turn(
    decision: TurnDecision,
    prompt_n: int,
    cache_n: int,
    *,
    previous: str | None,
    previous_tokens: int | None,
    count: TokenCounter | None,
    similar: bool = False,
) -> Split:
    """Split ``prompt_n`` into new and lost tokens for ``decision`` (see the module docstring).

    ``previous_tokens`` is the server's own count of ``previous`` when known (the previous
    turn's ``prompt_n + cache_n``); otherwise ``count`` asks the server's tokenizer, and without
    one the counts are estimated from character lengths (``estimated=True``).
    """
    prompt_n, cache_n = max(0, prompt_n), max(0, cache_n)
    total = prompt_n + cache_n
    prompt = decision.prompt
    if prompt is None or previous is None or total == 0:
        return Split(prompt_n, 0, {}, None, None, None, False)
    estimated = False

    async def tokens_of(text: str) -> int:
        nonlocal estimated
        if not text:
            return 0
        if text == prompt:
            return total
        counted = await count(text) if count is not None else None
        if counted is None:
            estimated = True
            return round(total * len(text) / max(1, len(prompt)))
        return counted

    diff = common_prefix(prompt, previous)
    early = diff < len(previous)
    prev_tokens = previous_tokens if previous_tokens is not None else await tokens_of(previous)
    diff_tokens = await tokens_of(prompt[:diff]) if early else prev_tokens
    ceiling = max(0, total - 1)
    ideal = min(max(0, diff_tokens), ceiling)
    if 0 < ideal - cache_n <= TAIL_SLACK:
        ideal = cache_n  # the last characters re-tokenised differently: any cache pays that
    base = max(ideal, min(max(0, prev_tokens), ceiling)) if early else ideal
    new = min(prompt_n, max(1, total - base)) if prompt_n else 0
    lost = prompt_n - new
    routing = min(lost, max(0, ideal - cache_n))
    changed = lost - routing
    losses: dict[str, int] = {}
    if routing:
        why = routing_reason(decision, reusable=ideal, similar=similar)
        key = why if why is not None else UNATTRIBUTED
        losses[key] = routing
    if changed:
        key = Reason.PROMPT_CHANGED_EARLY.value
        losses[key] = losses.get(key, 0) + changed
    reason = max(losses, key=lambda k: losses[k]) if losses else None
    if reason == UNATTRIBUTED:
        reason = None
    return Split(new, lost, losses, reason, diff, diff_tokens, estimated)
