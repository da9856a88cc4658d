"""A character's earlier prompts, as the warmth ledger remembers them: which earlier prompt a
new one continues (for an identity that is not sure) and which turn a restored save was taken
after (for "restored from an older save, N messages behind")."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from kvtui.warmth.accounting import common_prefix

SIMILAR_MIN_CHARS = 128
"""An earlier prompt counts as this one's past only when they share at least this much."""
EXTENT_SLACK = 4
"""Tokens a save's count may differ from the turn it was taken after (BOS, a trailing token)."""


@dataclass
class Prior:
    """A prompt a character was sent, with the server's token count once its reply ended."""

    prompt: str
    tokens: int | None = None
    extent: int | None = None


def similar_prior(prompt: str, candidates: Iterable[Prior]) -> Prior | None:
    """The candidate ``prompt`` continues furthest (at least half of it, and
    :data:`SIMILAR_MIN_CHARS`), or ``None``."""
    best: tuple[int, Prior] | None = None
    for prior in candidates:
        shared = common_prefix(prompt, prior.prompt)
        if shared >= max(SIMILAR_MIN_CHARS, len(prior.prompt) // 2) and (
            best is None or shared > best[0]
        ):
            best = (shared, prior)
    return best[1] if best else None


def matching_extent(extents: Iterable[tuple[int, int]], saved_tokens: int) -> int | None:
    """The prompt length (characters) of the turn whose extent (tokens the slot held after its
    reply) a save of ``saved_tokens`` matches: the save was taken after that turn."""
    near = [(abs(extent - saved_tokens), length) for length, extent in extents]
    best = min(near, default=None)
    return best[1] if best is not None and best[0] <= EXTENT_SLACK else None
