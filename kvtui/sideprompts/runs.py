"""What a side-prompt run is and what it hands back: the plan, the outcome, the failures.

:class:`SideRun` is a planned run (template, chat, scene, prompt, the tracker's current text);
:class:`SideOutcome` is what a run ended with (``saved``, ``cancelled`` or ``failed``, with the
one-line message a user sees). ``FAILURES`` are the errors a user can hit, which a run reports
in its outcome instead of raising. Shared by the planner, the service, the triggers and the
front ends.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from kvtui.llama.errors import LlamaError
from kvtui.memory.contract import Memory
from kvtui.memory.jobs import JobError
from kvtui.memory.library import LibraryError
from kvtui.memory.lorebook import BookError
from kvtui.memory.preview import PreviewError, TextPreview
from kvtui.memory.prompt import RegexError
from kvtui.memory.scene import Scene, SceneError
from kvtui.sideprompts.prompt import SidePromptText
from kvtui.sideprompts.templates import SidePrompt
from kvtui.sillytavern import ChatRef

FAILURES = (
    SceneError,
    LibraryError,
    BookError,
    JobError,
    LlamaError,
    RegexError,
    PreviewError,
    OSError,
)


class SidePromptRefused(SceneError):
    """A run the template does not allow (manual runs switched off, or disabled)."""


@dataclass(frozen=True)
class SideRun:
    """One planned run: the template, the chat, the scene and the prompt."""

    template: SidePrompt
    ref: ChatRef
    scene: Scene
    prompt: SidePromptText
    current: str | None
    """The tracker's entry text before this run (None: no entry yet)."""
    previous: tuple[Memory, ...]
    book_name: str
    book_path: Path


@dataclass(frozen=True)
class SideOutcome:
    template: str
    chat: str
    status: str
    """``saved``, ``cancelled`` or ``failed``."""
    start: int | None = None
    end: int | None = None
    text: str = ""
    uid: int | None = None
    message: str = ""
    slot: int | None = None
    mode: str = ""
    hint: str = ""
    """How to bind the book to the chat in SillyTavern (for a saved run)."""

    @property
    def ok(self) -> bool:
        return self.status == "saved"

    @property
    def line(self) -> str:
        """One line for a log or a terminal: the template, then what happened."""
        mark = {"saved": "✓", "cancelled": "–"}.get(self.status, "✗")
        return f"{mark} {self.template}: {self.message or self.status}"


Decide = Callable[[SideRun, TextPreview], Awaitable[None]]
"""Drives a preview to accepted or cancelled (it may call ``service.regenerate`` to retry)."""
