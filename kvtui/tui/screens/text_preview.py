"""The free-text preview: accept, edit, retry or cancel one side-prompt reply.

One modal used by every screen that runs side prompts (the Side prompts screen's manual runs and
the Memory screen's after-memory batch). It drives a :class:`kvtui.memory.preview.TextPreview`:
the text box is editable and Accept saves what it holds, Retry asks the server again (the same
KV-safe job), Cancel (or Esc) writes nothing. :func:`decide` shows it from a worker and returns
once the preview is accepted or cancelled; a lock keeps a batch's previews one at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Label, TextArea

from kvtui.memory.preview import PreviewError, PreviewState, TextPreview
from kvtui.sideprompts.runs import FAILURES

Regenerate = Callable[[TextPreview], Awaitable[None]]


class TextPreviewScreen(ModalScreen[None]):
    """Dismisses once ``preview`` is accepted or cancelled."""

    DEFAULT_CSS = """
    TextPreviewScreen > Vertical { width: 90%; height: 80%; }
    TextPreviewScreen #text-preview-text { height: 1fr; min-height: 4; }
    TextPreviewScreen #text-preview-status { height: auto; color: $text-muted; }
    TextPreviewScreen #text-preview-status.error { color: $text-error; }
    """

    BINDINGS = [
        Binding("ctrl+s", "accept", "Accept", id="text_preview.accept"),
        Binding("ctrl+t", "retry", "Retry", id="text_preview.retry"),
        Binding("escape", "cancel", "Cancel", id="text_preview.cancel"),
    ]

    def __init__(self, title: str, preview: TextPreview, regenerate: Regenerate) -> None:
        super().__init__()
        self._title = title
        self.preview = preview
        self._regenerate = regenerate
        self.status_text = ""

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog") as dialog:
            dialog.border_title = self._title
            yield TextArea(self.preview.text, id="text-preview-text", soft_wrap=True)
            yield Label("", id="text-preview-status", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Accept (ctrl+s)", variant="success", id="text-preview-accept")
                yield Button("Retry (ctrl+t)", id="text-preview-retry")
                yield Button("Cancel (esc)", id="text-preview-cancel")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self._offer()

    def _offer(self) -> None:
        preview = self.preview
        waiting = preview.state is PreviewState.WAITING
        self.query_one("#text-preview-text", TextArea).text = preview.text
        self.query_one("#text-preview-accept", Button).disabled = waiting
        self.query_one("#text-preview-retry", Button).disabled = waiting
        if waiting:
            self._status("Asking again…")
        elif preview.error:
            self._status(preview.error, error=preview.state is PreviewState.FAILED)
        else:
            self._status(f"Attempt {preview.attempts}: edit if you like, then Accept or Retry.")

    def _status(self, text: str, *, error: bool = False) -> None:
        self.status_text = text
        label = self.query_one("#text-preview-status", Label)
        label.update(text)
        label.set_class(error, "error")

    @on(Button.Pressed, "#text-preview-accept")
    def action_accept(self) -> None:
        preview = self.preview
        if preview.state not in (PreviewState.READY, PreviewState.FAILED):
            return
        text = self.query_one("#text-preview-text", TextArea).text
        try:
            if text.strip() != preview.text:
                preview.edit(text)
            preview.accept()
        except PreviewError as err:
            self._status(str(err), error=True)
            return
        self.dismiss(None)

    @on(Button.Pressed, "#text-preview-retry")
    def action_retry(self) -> None:
        if self.preview.state in (PreviewState.READY, PreviewState.FAILED):
            self.preview.retry()
            self._offer()
            self._retry()

    @work(exclusive=True, group="text-preview-retry", exit_on_error=False)
    async def _retry(self) -> None:
        try:
            await self._regenerate(self.preview)
        except FAILURES as err:
            self.preview.fail(str(err))
        self._offer()

    @on(Button.Pressed, "#text-preview-cancel")
    def action_cancel(self) -> None:
        self.workers.cancel_group(self, "text-preview-retry")  # a job still restores its slot
        self.preview.cancel()
        self.dismiss(None)


async def decide(
    app: App[object],
    title: str,
    preview: TextPreview,
    regenerate: Regenerate,
    lock: asyncio.Lock | None = None,
) -> None:
    """Show ``preview`` and wait until it is accepted or cancelled (one at a time per lock)."""
    async with lock or asyncio.Lock():
        done = asyncio.Event()
        screen = TextPreviewScreen(title, preview, regenerate)
        app.push_screen(screen, lambda _: done.set())
        await done.wait()
