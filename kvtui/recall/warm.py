"""The prompt prewarm replays for a character whose recorded prompt holds recall macros.

Prewarm (``p``, ``kvtui prewarm``) processes a character's last recorded prompt — as the client
wrote it, with ``{{kvtui_memories}}`` in it. Sent like that, the slot would hold the macro's own
text, and, with ``recall_keep_in_history``, none of the recall kept higher up in the prompt: the
next turn would differ from the warmed cache at the first kept recall. :func:`warm_prompt` gives
instead what the next turn begins with: the per-turn macro's line left out (as an empty recall),
the long-term block as it stands, and the kept recall put back where it was. Nothing is changed
in recall's state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kvtui.recall import pins
from kvtui.recall.hook import STATE_FILE
from kvtui.recall.macro import replace_macros, scan
from kvtui.recall.settings import RecallSettings
from kvtui.recall.state import load_state


def warm_prompt(settings: Any, chat: str, character: str, prompt: str) -> str:
    """``prompt`` (a recorded text prompt) as the slot should hold it; itself without macros."""
    s = RecallSettings.from_settings(settings)
    if not s.enabled or not scan({"prompt": prompt}, (s.macro, s.longterm_macro)).found:
        return prompt
    state_dir: Path | None = getattr(settings, "state_dir", None)
    state, _error = load_state(state_dir / STATE_FILE if state_dir is not None else None)
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
    return pins.build(base, pins.kept(held.pins, base, at))
