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
from kvtui.memory.recognize import JobKind as RecognizedKind
from kvtui.memory.recognize import recognize_job
from kvtui.slots import GenType

JobKind = Literal["transcript", "quiet"]


def background_job(body: Mapping[str, Any], gen_type: GenType) -> JobKind | None:
    """What kind of background job ``body`` is, or None for a character's turn (the shapes
    are :func:`kvtui.memory.recognize.recognize_job`'s)."""
    shape = recognize_job(canonical_text(body))
    if shape is not None and shape.kind is RecognizedKind.MEMORYBOOKS:
        return "transcript"
    if shape is not None or gen_type is GenType.QUIET:
        return "quiet"
    return None
