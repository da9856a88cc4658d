"""Side-prompt prompts.

The prompt is, in this order: the template's instructions (``{{user}}``/``{{char}}`` resolved)
and its response-format guidance, the tracker's current state (its previous entry), the
requested earlier memories (marked as context), then the compiled scene. The fixed parts come
first, so consecutive runs of a template share a prompt prefix in their slot.

The reply's preview is the memory preview's free-text form,
:class:`kvtui.memory.preview.TextPreview`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvtui.memory.contract import Memory
from kvtui.memory.prompt import apply_regexes, previous_block, resolve_macros
from kvtui.memory.scene import Scene
from kvtui.sideprompts.templates import SidePrompt


@dataclass(frozen=True)
class SidePromptText:
    text: str
    fixed: str
    """The instructions and response format: identical from run to run of one template."""


def build_prompt(
    template: SidePrompt,
    scene: Scene,
    current: str | None,
    previous: Sequence[Memory] = (),
    regexes: Sequence[tuple[str, str]] = (),
) -> SidePromptText:
    instructions = resolve_macros(template.prompt.strip(), scene.user, scene.char)
    parts = [instructions]
    if template.response_format.strip():
        guidance = resolve_macros(template.response_format.strip(), scene.user, scene.char)
        parts += ["", "=== RESPONSE FORMAT ===", guidance]
    fixed = "\n".join(parts)
    lines = [fixed, ""]
    lines += ["=== CURRENT STATE (update it; do not repeat it unchanged) ==="]
    lines += [current.strip() if current and current.strip() else "(none yet)", ""]
    lines += previous_block(list(previous)[-7:])
    lines += [
        "=== NEW MESSAGES ===",
        apply_regexes("\n".join(scene.transcript()), regexes),
        "",
        "=== END MESSAGES ===",
        "",
    ]
    return SidePromptText("\n".join(lines), fixed)
