"""What kvtui does and which key does what (keys as currently bound, keymap included)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

INTRO = (
    "kvtui keeps every character's llama.cpp KV cache warm: each character gets a slot, "
    "its cache is saved every few messages, old autosaves rotate away, tagged saves stay "
    "forever, and the right cache is restored before the character speaks again.\n"
    'Rebind any key with keymap in the config file, e.g. keymap = { save_slot = "ctrl+s" }; '
    "the id is in the first column. ctrl+p opens the command palette."
)


def keys_table(rows: Sequence[tuple[str, str, str, str]]) -> Table:
    """(binding id, key, action, what it does) as a table."""
    table = Table(box=None, padding=(0, 2, 0, 0), expand=True)
    table.add_column("id", style="dim", no_wrap=True)
    table.add_column("key", style="bold", no_wrap=True)
    table.add_column("action", no_wrap=True)
    table.add_column("what it does", ratio=1)
    for binding_id, key, description, tooltip in rows:
        table.add_row(binding_id, key, description, Text(tooltip))
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "close", "Close", id="help.close")]

    def __init__(self, rows: Sequence[tuple[str, str, str, str]]) -> None:
        super().__init__()
        self._rows = tuple(rows)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog wide-dialog") as dialog:
            dialog.border_title = "Help"
            with VerticalScroll():
                yield Static(Text(INTRO), classes="dialog-text")
                yield Static(keys_table(self._rows))
        yield Footer(show_command_palette=False)

    def action_close(self) -> None:
        self.dismiss(None)
