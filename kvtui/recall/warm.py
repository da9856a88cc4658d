"""The prompt prewarm replays for a character whose recorded prompt holds recall macros.

Prewarm (``p``, ``kvtui prewarm``) processes a character's last recorded prompt — as the client
wrote it, with ``{{kvtui_memories}}`` in it. Sent like that, the slot would hold the macro's own
text, and, with ``recall_keep_in_history``, none of the recall kept higher up in the prompt: the
next turn would differ from the warmed cache at the first kept recall. :func:`warm_prompt` gives
instead what the next turn begins with: the per-turn macro's line left out (as an empty recall),
the long-term block as it stands, and the kept recall (the last turn's too) put back where it
was. Nothing is changed
in recall's state.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kvtui.recall import pins
from kvtui.recall.hook import STATE_FILE
from kvtui.recall.macro import replace_macros, scan
from kvtui.recall.settings import RecallSettings
from kvtui.recall.state import RecallState


def warm_prompt(settings: Any, chat: str, character: str, prompt: str) -> str:
    """``prompt`` (a recorded text prompt) as the slot should hold it; itself without macros,
    or when recall's settings or state cannot be read (prewarm never fails over recall)."""
    try:
        s = RecallSettings.from_settings(settings)
    except ValueError:
        return prompt
    if not s.enabled or not scan({"prompt": prompt}, (s.macro, s.longterm_macro)).found:
        return prompt
    state_dir: Path | None = getattr(settings, "state_dir", None)
    state = _read_state(state_dir / STATE_FILE if state_dir is not None else None)
    block = state.longterm.get(chat)
    values = {s.macro: "", s.longterm_macro: block.text if block is not None else ""}
    base = replace_macros({"prompt": prompt}, values).body.get("prompt")
    marked = replace_macros({"prompt": prompt}, {**values, s.macro: pins.SENTINEL}).body
    held = state.characters.get((chat, character))
    if not isinstance(base, str) or held is None or not held.pins or not s.keep_in_history:
        return base if isinstance(base, str) else prompt
    at = pins.macro_offset(base, str(marked.get("prompt", "")))
    if at is None:
        return base
    # the last turn's own recall (at the macro) stays too: the next turn has it there
    return pins.build(base, pins.kept(held.pins, base, at + 1))


def _read_state(path: Path | None) -> RecallState:
    """Recall's saved state, read only (a damaged file is left where it is for the proxy)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
        return RecallState.from_json(data) if isinstance(data, dict) else RecallState()
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError):
        return RecallState()
