"""An error the user must read: what failed, and the full message or traceback."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Label, Static


class ErrorModal(ModalScreen[None]):
    """Shows ``details`` verbatim (no markup): server bodies and tracebacks stay intact."""

    BINDINGS = [Binding("escape,enter", "close", "Close", id="error.close")]

    def __init__(self, title: str, summary: str, details: str = "") -> None:
        super().__init__()
        self._title = title
        self._summary = summary
        self._details = details

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog error-dialog") as dialog:
            dialog.border_title = self._title
            yield Label(self._summary, markup=False, classes="dialog-text")
            if self._details:
                with VerticalScroll(classes="error-details"):
                    yield Static(self._details, markup=False)
            yield Button("Close", variant="primary", id="close")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    def on_button_pressed(self) -> None:
        self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
