"""Side-prompt prompts and the plain-text preview.

The prompt is, in this order: the template's instructions (``{{user}}``/``{{char}}`` resolved)
and its response-format guidance, the tracker's current state (its previous entry), the
requested earlier memories (marked as context), then the compiled scene. The fixed parts come
first, so consecutive runs of a template share a prompt prefix in their slot.

:class:`TextPreview` is the accept / edit / retry / cancel state of one reply (the memory
preview's states, for free text): only an accepted preview has text to save, and an edit is what
gets saved.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from kvtui.memory.contract import Memory
from kvtui.memory.preview import PreviewError, PreviewState
from kvtui.memory.prompt import apply_regexes, previous_block, resolve_macros
from kvtui.memory.scene import Scene
from kvtui.sideprompts.templates import SidePrompt

_THINK = re.compile(r"<think>.*?(</think>|$)", re.S | re.I)


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


def clean_reply(text: str) -> str:
    """The reply as entry text: ``<think>`` blocks and surrounding blank space dropped."""
    return _THINK.sub("", text).strip()


@dataclass
class TextPreview:
    state: PreviewState = PreviewState.WAITING
    text: str = ""
    raw: str = ""
    error: str | None = None
    attempts: int = 0
    edited: bool = False
    history: list[str] = field(default_factory=list)
    slot: int | None = None
    """The slot the last reply was generated in."""
    mode: str = ""
    """``utility``, ``borrowed`` or ``server`` (see the job runner)."""

    def offer(self, raw: str, *, truncated: bool = False) -> None:
        """A new reply: ``READY`` with its text, or ``FAILED`` when it is empty."""
        self._require(PreviewState.WAITING)
        self.raw, self.attempts, self.edited = raw, self.attempts + 1, False
        self.history.append(raw)
        self.text = clean_reply(raw)
        if not self.text:
            self.error = "The reply was empty; retry, or edit the text by hand."
            self.state = PreviewState.FAILED
            return
        self.error = (
            "The reply stopped at its length limit (n_predict); it may be cut short."
            if truncated
            else None
        )
        self.state = PreviewState.READY

    def fail(self, message: str) -> None:
        self._require(PreviewState.WAITING)
        self.attempts += 1
        self.text, self.error, self.state = "", message, PreviewState.FAILED

    def edit(self, text: str) -> str:
        self._require(PreviewState.READY, PreviewState.FAILED)
        if not text.strip():
            raise PreviewError("The text is empty; write something or cancel.")
        self.text, self.error, self.edited = text.strip(), None, True
        self.state = PreviewState.READY
        return self.text

    def retry(self) -> None:
        self._require(PreviewState.READY, PreviewState.FAILED)
        self.state = PreviewState.WAITING

    def accept(self) -> str:
        self._require(PreviewState.READY)
        self.state = PreviewState.ACCEPTED
        return self.text

    def cancel(self) -> None:
        if self.state is PreviewState.ACCEPTED:
            raise PreviewError("This side prompt was already accepted.")
        self.state = PreviewState.CANCELLED

    @property
    def accepted(self) -> str | None:
        return self.text if self.state is PreviewState.ACCEPTED else None

    def _require(self, *states: PreviewState) -> None:
        if self.state not in states:
            allowed = " or ".join(s.value for s in states)
            raise PreviewError(f"The preview is {self.state.value}, not {allowed}.")
