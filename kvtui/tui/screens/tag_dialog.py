"""Ask for a tag before saving every active character ("save with a name" in the seed)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, Static

from kvtui.store.names import normalize


def tag_preview(tag: str, characters: Sequence[str]) -> Text:
    """What the tag becomes in file names, and who gets saved with it."""
    name = normalize(tag.strip()) if tag.strip() else ""
    if not name:
        return Text("Type a tag, e.g. end_of_chapter_1. Tagged saves are never rotated away.")
    who = ", ".join(characters) if characters else "nobody (no slot has a character)"
    return Text.assemble(("File tag: ", "dim"), (name, "bold"), "\n", ("Saves: ", "dim"), who)


class TagDialog(ModalScreen[str | None]):
    """Dismisses with the tag as typed (the store normalises it), or ``None`` on Esc."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="tag.cancel")]

    def __init__(self, characters: Sequence[str] = ()) -> None:
        super().__init__()
        self._characters = tuple(characters)

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog") as dialog:
            dialog.border_title = "Save all active characters with a tag"
            yield Input(placeholder="tag, e.g. важный_момент", id="tag")
            yield Static(tag_preview("", self._characters), id="tag-preview")
            yield Label("", id="tag-error", classes="field-error", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (enter)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")
        yield Footer(show_command_palette=False)

    @on(Input.Changed, "#tag")
    def _preview(self, event: Input.Changed) -> None:
        self.query_one("#tag-preview", Static).update(tag_preview(event.value, self._characters))
        self.query_one("#tag-error", Label).update("")

    @on(Input.Submitted, "#tag")
    @on(Button.Pressed, "#save")
    def _submit(self) -> None:
        tag = self.query_one("#tag", Input).value.strip()
        if not tag or not normalize(tag):
            self.query_one("#tag-error", Label).update("A tag needs at least one letter or digit.")
            return
        self.dismiss(tag)

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
