"""The stable long-term block: a chat's memories frozen, rebuilt only in batches.

Per-turn recall changes with every user message, so it belongs near the end of the prompt. The
long-term block may sit high (in the story string, after the card) because it changes only when
``longterm_batch`` new memories have accumulated since it was frozen, or when the user asks
(:meth:`kvtui.recall.engine.RecallEngine.refresh_longterm`): one re-prefill per batch instead of
one per turn. Its text is frozen too — a memory edited in the book shows at the next batch.
Memories are written in chronological order, so a rebuild that only adds memories changes the
block from its end; when the budget is full the oldest memories give way.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvtui.recall.memories import Memory
from kvtui.recall.select import TokenCounter, chronological, render_block, render_memory
from kvtui.recall.settings import RecallSettings
from kvtui.recall.state import LongTerm


def longterm_due(block: LongTerm, memories: Sequence[Memory], settings: RecallSettings) -> bool:
    """Whether enough memories are new since ``block`` was frozen to rebuild it."""
    seen = set(block.seen)
    return sum(1 for m in memories if m.id not in seen) >= settings.longterm_batch


def build_longterm(
    memories: Sequence[Memory],
    settings: RecallSettings,
    count_tokens: TokenCounter,
    old: LongTerm | None,
) -> LongTerm:
    """A new frozen block of the newest memories that fit ``longterm_budget`` tokens."""
    ordered = chronological(memories)
    kept: list[Memory] = []
    left = settings.longterm_budget
    for memory in reversed(ordered):
        cost = count_tokens(render_memory(memory, settings)) + (
            count_tokens(settings.joiner) if kept else 0
        )
        if cost > left:
            break
        kept.append(memory)
        left -= cost
    kept.reverse()
    last = dict(old.last_injected) if old else {}
    return LongTerm(
        batch=(old.batch if old else 0) + 1,
        ids=tuple(m.id for m in kept),
        seen=tuple(m.id for m in ordered),
        text=render_block(kept, settings),
        last_injected=last,
    )
