"""The seed's cache-semantics table as one pure function: reuse, a new round, or a redo.

:func:`decide` looks at the recall cached for a (chat, character), the key of the request
(:class:`~kvtui.recall.history.RecallKey`) and its generation type:

- impersonate and quiet never change the cached recall: they reuse it, or, with none cached,
  get one computed for that request only (``TRANSIENT``);
- nothing cached yet: a new round;
- continue: reused (unless the extension reported an edit or deletion since);
- the chat moved on (a new user message): a new round;
- a reported edit/delete, an edited user message or scanned message, a shorter chat: the cached
  round is redone (``REDO``: recomputed from the sticky records the round started from);
- otherwise — regenerate, swipe, or a "normal" that repeats the same turn — reused, except a
  swipe under ``swipe_policy = recompute``, which starts a new round (so the sticky penalty can
  bring other memories to the new attempt).
"""

from __future__ import annotations

from enum import StrEnum

from kvtui.recall.history import Change, RecallKey, compare
from kvtui.recall.settings import SwipePolicy
from kvtui.recall.state import CharacterRecall
from kvtui.slots import GenType


class Action(StrEnum):
    REUSE = "reuse"
    NEW_ROUND = "new_round"
    REDO = "redo"
    TRANSIENT = "transient"


_REDO_REASONS = {
    Change.EDITED: "the user's last message changed (edited)",
    Change.SCANNED_EDITED: "a scanned message changed (edited)",
    Change.DELETED: "the chat is shorter (messages were deleted)",
}


def decide(
    state: CharacterRecall | None, key: RecallKey, gen_type: GenType, swipe: SwipePolicy
) -> tuple[Action, str]:
    """What to do with the cached recall for a request, and why (one line for telemetry)."""
    cached = state is not None and state.key is not None
    if gen_type in (GenType.QUIET, GenType.IMPERSONATE):
        if cached:
            return Action.REUSE, f"{gen_type} never changes the cached recall"
        return Action.TRANSIENT, f"{gen_type} with no cached recall: computed, not kept"
    if state is None or state.key is None:
        return Action.NEW_ROUND, "no cached recall for this chat and character yet"
    if gen_type is GenType.CONTINUE and state.stale is None:
        return Action.REUSE, "continue extends the same reply"
    change = compare(state.key, key)
    if change is Change.NEXT_TURN:
        return Action.NEW_ROUND, "a new user message"
    if state.stale is not None:
        return Action.REDO, state.stale
    if change in _REDO_REASONS:
        return Action.REDO, _REDO_REASONS[change]
    if gen_type is GenType.SWIPE and swipe is SwipePolicy.RECOMPUTE:
        return Action.NEW_ROUND, "swipe, recomputed by the swipe setting"
    return Action.REUSE, f"{gen_type} with the user's message unchanged"
