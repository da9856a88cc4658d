"""Telling background jobs from a character's turns: memory and summary requests of other
SillyTavern extensions that pass through the proxy.

* ``transcript``: a request that hands the model a scene to summarise (MemoryBooks' scene
  transcript, kvtui's own memory prompt): it shares little with any character's prompt, so it
  goes to the reserved utility slot (``memory_slot``) when there is one, else into a lent slot;
* ``quiet``: a quiet generation (SillyTavern's Summarize, other extensions' ``generateQuietPrompt``)
  that extends the character's own prompt: it runs in the character's own slot — cheap there —
  whose cache is parked first and restored afterwards, so the next real turn finds it intact.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from kvtui.fingerprint import canonical_text
from kvtui.slots import GenType

JobKind = Literal["transcript", "quiet"]

TRANSCRIPT_MARKERS = ("=== SCENE TRANSCRIPT ===", "=== END SCENE ===")
"""Text MemoryBooks (and kvtui's memory prompt) put around the scene to summarise."""


def background_job(body: Mapping[str, Any], gen_type: GenType) -> JobKind | None:
    """What kind of background job ``body`` is, or None for a character's turn."""
    text = canonical_text(body)
    if any(marker in text for marker in TRANSCRIPT_MARKERS):
        return "transcript"
    if gen_type is GenType.QUIET:
        return "quiet"
    return None
