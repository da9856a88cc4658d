"""Other extensions' memory and summary jobs, recognised on the wire, and where they should run.

The proxy sees MemoryBooks' scene-transcript prompts, SillyTavern's Summarize and other quiet
jobs as ordinary generations. :func:`recognize_job` tells them apart from a character's turn by
their text; :func:`route_job` decides where one should run so no character loses its cache:

* in a character's own slot when the job merely extends that character's cached prompt (the
  Summarize default builder appends its instruction after the chat): cheap there, and the next
  real turn still reuses the cached prefix;
* otherwise in the utility slot when one is reserved, else in a borrowed slot (the proxy parks
  its occupant exactly as :class:`kvtui.memory.jobs.JobRunner` does).

Pure functions; the proxy wires them in.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

SCENE_MARKER = "=== SCENE TRANSCRIPT ==="
_SUMMARIZE_MARKERS = (
    "Summarize the most important facts and events in the story so far",  # ST 1.18 default
    "Pause your roleplay. Summarize the most important facts",  # older ST default
)
_TAIL = 4000  # Summarize appends its instruction at the end of the prompt


class JobKind(StrEnum):
    MEMORYBOOKS = "memorybooks"
    """MemoryBooks (or kvtui) memory and side-prompt jobs: a compiled scene transcript."""
    SUMMARIZE = "summarize"
    """SillyTavern's Summarize extension (and look-alikes) with its default prompt."""


@dataclass(frozen=True)
class JobShape:
    kind: JobKind
    reason: str


def recognize_job(prompt: str) -> JobShape | None:
    """The kind of background job ``prompt`` is, or None for anything else (a character turn).

    For Chat Completion requests pass the rendered messages (``canonical_text``).
    """
    if SCENE_MARKER in prompt and ("=== END SCENE ===" in prompt or '"keywords"' in prompt):
        return JobShape(JobKind.MEMORYBOOKS, "a compiled scene transcript (MemoryBooks' shape)")
    tail = prompt[-_TAIL:]
    for marker in _SUMMARIZE_MARKERS:
        if marker in tail:
            return JobShape(JobKind.SUMMARIZE, "SillyTavern Summarize's default instruction")
    return None


@dataclass(frozen=True)
class JobRoute:
    slot: int | None
    """The slot to run in; None means borrow an idle slot (park and restore its occupant)."""
    why: str
    """``extends`` (a character's own slot), ``utility`` or ``borrow``."""


def route_job(
    prompt: str,
    residents: Mapping[int, str],
    *,
    utility_slot: int | None,
    extend_ratio: float = 0.9,
) -> JobRoute:
    """Where a recognised job runs. ``residents`` maps slot → the prompt text cached there.

    A job whose prompt starts with at least ``extend_ratio`` of a resident's cached prompt
    extends it: it runs there and reuses (then extends) that cache instead of evicting anyone.
    """
    best: tuple[int, int] | None = None
    for slot, cached in residents.items():
        if not cached or slot == utility_slot:
            continue
        common = len(os.path.commonprefix([prompt, cached]))
        if common >= extend_ratio * len(cached) and (best is None or common > best[1]):
            best = (slot, common)
    if best is not None:
        return JobRoute(best[0], "extends")
    if utility_slot is not None:
        return JobRoute(utility_slot, "utility")
    return JobRoute(None, "borrow")
