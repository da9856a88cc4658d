"""Choosing the memories for one turn: World Info keyword matching, scoring, top-K in a budget.

Matching follows SillyTavern's World Info (``world-info.js`` ``matchKeys``): a key written
``/pattern/flags`` is a regular expression; otherwise text is compared lowercased unless case
sensitive, and with whole words on, a single-word key must stand between non-word characters
(``(?:^|\\W)key(?:$|\\W)``) while a key of several words is a plain substring. The haystack is the
last ``scan_depth`` messages (an entry's own ``scanDepth`` wins). Secondary keys apply with the
entry's ``selectiveLogic`` (AND ANY, NOT ALL, NOT ANY, AND ALL). ``constant`` is World Info's
flag for SillyTavern's own injection (kvtui's memory books default to it); recall matches such
entries by their keywords too, unless ``constant_always`` makes them match every turn.
One deliberate difference: "word characters" are Unicode letters and digits (Python's ``\\W``),
where SillyTavern's JavaScript regex knows only ASCII ones — so a Cyrillic key matches whole words
here, not inside longer words.

Score of a matched memory: the number of its primary keys found, plus ``1 / (1 + d)`` where ``d``
is how many messages back the newest match is (the latest message weighs most), minus the sticky
penalty: ``sticky_penalty × consecutive rounds`` (capped at ``sticky_max_streak``) when it was
recalled in the round just before (the seed's StickyCache: last round, consecutive count). The
penalty only reorders; a matching memory is left out only when top-K or the token budget is full.
Ties go to the higher ``order``, then the lower uid, so the same inputs always give the same set.
The chosen memories are written in chronological order (memory number or ``order``, then uid).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from kvtui.recall.memories import (
    SELECTIVE_AND_ALL,
    SELECTIVE_AND_ANY,
    SELECTIVE_NOT_ALL,
    SELECTIVE_NOT_ANY,
    Memory,
)
from kvtui.recall.settings import RecallSettings

TokenCounter = Callable[[str], int]

STICKY_KEEP_ROUNDS = 64
"""Sticky records older than this many rounds are forgotten (they no longer affect a score)."""


def estimate_tokens(text: str) -> int:
    """Characters / 4, rounded up: the estimate used without a tokenizer."""
    return (len(text) + 3) // 4


@dataclass(frozen=True)
class Sticky:
    """When a memory was last recalled, and for how many consecutive rounds."""

    last_round: int
    consecutive: int


@dataclass(frozen=True)
class Scored:
    memory: Memory
    score: float
    penalty: float


_REGEX_KEY = re.compile(r"\A/(.+)/([a-z]*)\Z", re.DOTALL)


def _key_regex(key: str) -> re.Pattern[str] | None:
    m = _REGEX_KEY.match(key)
    if not m:
        return None
    flags = 0
    for f in m.group(2):
        flags |= {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}.get(f, 0)
    try:
        return re.compile(m.group(1), flags)
    except re.error:
        return None  # as SillyTavern: an invalid pattern is matched as plain text


def key_matches(haystack: str, key: str, *, case_sensitive: bool, whole_words: bool) -> bool:
    """World Info's ``matchKeys`` for one key."""
    if (regex := _key_regex(key)) is not None:
        return regex.search(haystack) is not None
    needle = key.strip()
    if not needle:
        return False
    if not case_sensitive:
        haystack, needle = haystack.lower(), needle.lower()
    if whole_words and len(needle.split()) == 1:
        return re.search(r"(?:^|\W)" + re.escape(needle) + r"(?:$|\W)", haystack) is not None
    return needle in haystack


def _match(memory: Memory, window: Sequence[str], settings: RecallSettings) -> float | None:
    """The keyword score of ``memory`` against ``window`` (newest first), None when no match."""
    if memory.constant and settings.constant_always:
        return 1.0
    if not memory.keys:
        return None
    depth = memory.scan_depth if memory.scan_depth is not None else settings.scan_depth
    recent = list(window[: max(depth, 0)])
    if not recent:
        return None
    case = memory.case_sensitive if memory.case_sensitive is not None else settings.case_sensitive
    whole = memory.whole_words if memory.whole_words is not None else settings.match_whole_words

    def found(text: str, key: str) -> bool:
        return key_matches(text, key, case_sensitive=case, whole_words=whole)

    haystack = "\n".join(recent)
    hits = [k for k in dict.fromkeys(memory.keys) if found(haystack, k)]
    if not hits:
        return None
    if memory.selective and memory.secondary:
        second = [found(haystack, k) for k in memory.secondary]
        logic = memory.selective_logic
        ok = {
            SELECTIVE_AND_ANY: any(second),
            SELECTIVE_NOT_ALL: not all(second),
            SELECTIVE_NOT_ANY: not any(second),
            SELECTIVE_AND_ALL: all(second),
        }.get(logic, any(second))
        if not ok:
            return None
    newest = next(i for i, text in enumerate(recent) if any(found(text, k) for k in hits))
    return len(hits) + 1.0 / (1 + newest)


def penalty(sticky: Sticky | None, round_no: int, settings: RecallSettings) -> float:
    if sticky is None or sticky.last_round != round_no - 1:
        return 0.0
    return settings.sticky_penalty * min(sticky.consecutive, settings.sticky_max_streak)


def render_memory(memory: Memory, settings: RecallSettings) -> str:
    return settings.item_template.format(
        content=memory.content, title=memory.title, keys=", ".join(memory.keys)
    )


def chronological(memories: Sequence[Memory]) -> list[Memory]:
    """Oldest first: kvtui's memory number, else the entry's order; then the uid."""
    return sorted(
        memories, key=lambda m: (m.number if m.number is not None else m.order, m.uid, m.id)
    )


def render_block(memories: Sequence[Memory], settings: RecallSettings) -> str:
    return settings.joiner.join(render_memory(m, settings) for m in chronological(memories))


def rank(
    memories: Sequence[Memory],
    window: Sequence[str],
    settings: RecallSettings,
    sticky: Mapping[str, Sticky],
    round_no: int,
    exclude: Collection[str] = (),
) -> list[Scored]:
    """Every matching memory, best first."""
    scored: list[Scored] = []
    for memory in memories:
        if memory.id in exclude:
            continue
        base = _match(memory, window, settings)
        if base is None:
            continue
        cost = penalty(sticky.get(memory.id), round_no, settings)
        scored.append(Scored(memory, base - cost, cost))
    scored.sort(key=lambda s: (-s.score, -s.memory.order, s.memory.uid, s.memory.id))
    return scored


def pick(
    ranked: Sequence[Scored],
    settings: RecallSettings,
    count_tokens: TokenCounter = estimate_tokens,
    *,
    top_k: int | None = None,
    budget: int | None = None,
) -> list[Memory]:
    """The best memories, at most ``top_k``, whose rendered text fits ``budget`` tokens."""
    limit = settings.top_k if top_k is None else top_k
    left = settings.token_budget if budget is None else budget
    chosen: list[Memory] = []
    for item in ranked:
        if len(chosen) >= limit:
            break
        cost = count_tokens(render_memory(item.memory, settings))
        if chosen:
            cost += count_tokens(settings.joiner)
        if cost > left:
            continue  # as World Info: an entry that overflows is skipped, smaller ones may fit
        chosen.append(item.memory)
        left -= cost
    return chosen


def advance(
    sticky: Mapping[str, Sticky], chosen: Collection[str], round_no: int
) -> dict[str, Sticky]:
    """The sticky records after ``chosen`` were recalled in ``round_no``."""
    out = {k: v for k, v in sticky.items() if round_no - v.last_round <= STICKY_KEEP_ROUNDS}
    for memory_id in chosen:
        before = out.get(memory_id)
        streak = before.consecutive + 1 if before and before.last_round == round_no - 1 else 1
        out[memory_id] = Sticky(round_no, streak)
    return out
