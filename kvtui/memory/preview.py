"""The memory preview as a pure state object, shared by the Memory screen and the CLI.

A preview holds the latest reply and what was made of it. From ``READY`` the user may accept,
edit (the edited memory is what gets saved), retry (a new reply replaces the old, edits
included) or cancel. A failed reply (``FAILED``) can be retried, fixed by hand (``edit_raw``:
the corrected text goes through the same parser) or cancelled. Only an ``ACCEPTED`` preview has
a memory to save; cancel and failures leave nothing to save. :class:`TextPreview` is the same
for free text (side prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from kvtui.errors import KvtuiError
from kvtui.memory.contract import (
    Memory,
    MemoryReplyError,
    ReplyCode,
    clean_reply,
    parse_memory,
)


class PreviewState(StrEnum):
    WAITING = "waiting"
    READY = "ready"
    FAILED = "failed"
    ACCEPTED = "accepted"
    CANCELLED = "cancelled"


class PreviewError(KvtuiError, RuntimeError):
    """An action the preview's state does not allow."""


@dataclass
class Preview:
    state: PreviewState = PreviewState.WAITING
    memory: Memory | None = None
    error: MemoryReplyError | None = None
    raw: str = ""
    attempts: int = 0
    edited: bool = False
    history: list[str] = field(default_factory=list)
    """Every raw reply offered so far (oldest first)."""

    def offer(self, raw: str, *, stop_type: str | None = None, truncated: bool = False) -> None:
        """A new reply: parsed into a memory (``READY``) or an error (``FAILED``)."""
        self._require(PreviewState.WAITING)
        self.raw = raw
        self.attempts += 1
        self.history.append(raw)
        self.edited = False
        try:
            self.memory = parse_memory(raw, stop_type=stop_type, truncated=truncated)
            self.error = None
            self.state = PreviewState.READY
        except MemoryReplyError as err:
            self.memory = None
            self.error = err
            self.state = PreviewState.FAILED

    def fail(self, error: MemoryReplyError) -> None:
        """The job itself failed (server error, prompt too large) with a reply-like error."""
        self._require(PreviewState.WAITING)
        self.attempts += 1
        self.memory, self.error, self.state = None, error, PreviewState.FAILED

    def edit(
        self,
        *,
        title: str | None = None,
        content: str | None = None,
        keywords: Sequence[str] | None = None,
    ) -> Memory:
        """Change the memory; the edit is what :meth:`accept` returns."""
        self._require(PreviewState.READY)
        assert self.memory is not None
        new_title = (title if title is not None else self.memory.title).strip()
        new_content = (content if content is not None else self.memory.content).strip()
        words = self.memory.keywords if keywords is None else keywords
        new_keywords = tuple(dict.fromkeys(w.strip() for w in words if w.strip()))
        if not new_title:
            raise MemoryReplyError(ReplyCode.MISSING_FIELDS_TITLE, "The title is empty.")
        if not new_content:
            raise MemoryReplyError(ReplyCode.MISSING_FIELDS_CONTENT, "The memory text is empty.")
        if not new_keywords:
            raise MemoryReplyError(ReplyCode.INVALID_KEYWORDS, "There are no keywords.")
        self.memory = Memory(new_title, new_content, new_keywords)
        self.edited = True
        return self.memory

    def edit_raw(self, text: str) -> Memory:
        """Replace the reply with corrected text (after a failure, or instead of field edits)."""
        self._require(PreviewState.READY, PreviewState.FAILED)
        memory = parse_memory(text)
        self.raw, self.memory, self.error = text, memory, None
        self.state, self.edited = PreviewState.READY, True
        return memory

    def retry(self) -> None:
        """Ask for a new reply (the caller runs the job again and calls :meth:`offer`)."""
        self._require(PreviewState.READY, PreviewState.FAILED)
        self.state = PreviewState.WAITING

    def accept(self) -> Memory:
        self._require(PreviewState.READY)
        assert self.memory is not None
        self.state = PreviewState.ACCEPTED
        return self.memory

    def cancel(self) -> None:
        if self.state is PreviewState.ACCEPTED:
            raise PreviewError("This memory was already accepted.")
        self.state = PreviewState.CANCELLED

    @property
    def accepted(self) -> Memory | None:
        return self.memory if self.state is PreviewState.ACCEPTED else None

    def _require(self, *states: PreviewState) -> None:
        _require(self.state, *states)


@dataclass
class TextPreview:
    """The same accept / edit / retry / cancel states for free-text output (side prompts).

    A reply is ``READY`` when it has text once ``<think>`` blocks are removed (a reply the
    server cut at its token limit is ``READY`` too, with a warning in ``error``: it can be
    edited before it is accepted); an empty reply is ``FAILED``. An edit is what gets saved.
    """

    state: PreviewState = PreviewState.WAITING
    text: str = ""
    error: str | None = None
    raw: str = ""
    attempts: int = 0
    edited: bool = False
    history: list[str] = field(default_factory=list)
    """Every raw reply offered so far (oldest first)."""
    slot: int | None = None
    """The slot the last reply was generated in."""
    mode: str = ""
    """``utility``, ``borrowed`` or ``server`` (see the job runner)."""

    def offer(self, raw: str, *, stop_type: str | None = None, truncated: bool = False) -> None:
        """A new reply: ``READY`` with its text, or ``FAILED`` when it is empty."""
        _require(self.state, PreviewState.WAITING)
        self.raw, self.attempts, self.edited = raw, self.attempts + 1, False
        self.history.append(raw)
        self.text = clean_reply(raw)
        if not self.text:
            self.error = "The reply was empty; retry, or edit the text by hand."
            self.state = PreviewState.FAILED
            return
        cut = truncated or stop_type == "limit"
        self.error = (
            "The reply stopped at its length limit (n_predict); it may be cut short."
            if cut
            else None
        )
        self.state = PreviewState.READY

    def fail(self, message: str) -> None:
        """The job itself failed (server error, prompt too large)."""
        _require(self.state, PreviewState.WAITING)
        self.attempts += 1
        self.text, self.error, self.state = "", message, PreviewState.FAILED

    def edit(self, text: str) -> str:
        """Replace the text (also after a failure); the edit is what :meth:`accept` returns."""
        _require(self.state, PreviewState.READY, PreviewState.FAILED)
        if not text.strip():
            raise PreviewError("The text is empty; write something or cancel.")
        self.text, self.error, self.edited = text.strip(), None, True
        self.state = PreviewState.READY
        return self.text

    def retry(self) -> None:
        _require(self.state, PreviewState.READY, PreviewState.FAILED)
        self.state = PreviewState.WAITING

    def accept(self) -> str:
        _require(self.state, PreviewState.READY)
        self.state = PreviewState.ACCEPTED
        return self.text

    def cancel(self) -> None:
        if self.state is PreviewState.ACCEPTED:
            raise PreviewError("This text was already accepted.")
        self.state = PreviewState.CANCELLED

    @property
    def accepted(self) -> str | None:
        return self.text if self.state is PreviewState.ACCEPTED else None


def _require(state: PreviewState, *states: PreviewState) -> None:
    if state not in states:
        allowed = " or ".join(s.value for s in states)
        raise PreviewError(f"The preview is {state.value}, not {allowed}.")
