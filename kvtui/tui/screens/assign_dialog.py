"""Put a character in a slot by hand: a chat and a character name, with suggestions.

Suggestions come from the SillyTavern data directory (chats by their names, and their members)
and from the names already in the save directory; without either, the inputs are plain. Chats
are listed under the chat input and filtered as one types, since SillyTavern's chat ids (a
group chat's is a timestamp) are not something anyone types from memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.suggester import Suggester, SuggestFromList
from textual.widgets import Button, Footer, Input, Label, OptionList
from textual.widgets.option_list import Option

from kvtui.tui.lookups import AssignSuggestions


@dataclass(frozen=True)
class Assignment:
    slot: int
    chat: str
    character: str


def chat_option(chat: str, suggestions: AssignSuggestions) -> Text:
    """``Forest Party  2026-05-03@19h02m11s004ms  4 members`` (names shown as plain text)."""
    title = suggestions.titles.get(chat)
    text = Text(title or chat, style="bold")
    if title:
        text.append(f"  {chat}", style="dim")
    members = suggestions.members.get(chat, ())
    if members:
        text.append(f"  {len(members)} member{'s' if len(members) != 1 else ''}", style="dim")
    return text


class _CharacterSuggester(Suggester):
    """Completes character names from the members of the chat typed above."""

    def __init__(self, dialog: AssignDialog) -> None:
        super().__init__(use_cache=False, case_sensitive=False)
        self._dialog = dialog

    async def get_suggestion(self, value: str) -> str | None:
        for name in self._dialog.suggestions.characters_for(self._dialog.chat_value):
            if name.casefold().startswith(value):
                return name
        return None


class AssignDialog(ModalScreen[Assignment | None]):
    """Dismisses with the assignment, or ``None`` on Esc."""

    BINDINGS = [
        Binding("escape", "cancel", "Cancel", id="assign.cancel"),
        Binding("down", "pick_chat", "Pick a chat", show=False, id="assign.pick_chat"),
    ]

    def __init__(
        self,
        slot: int,
        *,
        chat: str | None = None,
        character: str | None = None,
        suggestions: AssignSuggestions | None = None,
    ) -> None:
        super().__init__()
        self.slot = slot
        self.suggestions = suggestions or AssignSuggestions()
        self._chat = chat or ""
        self._character = character or ""

    @property
    def chat_value(self) -> str:
        """The chat as typed so far (kept here: the suggester may ask before mounting ends)."""
        return self._chat

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog") as dialog:
            dialog.border_title = f"Assign a character to slot {self.slot}"
            yield Label("Chat")
            yield Input(
                self._chat,
                placeholder="chat name or id (↓ picks from the list)",
                suggester=SuggestFromList(self.suggestions.chats, case_sensitive=False),
                id="chat",
            )
            yield OptionList(id="chat-choices")
            yield Label("Character")
            yield Input(
                self._character,
                placeholder="character name",
                suggester=_CharacterSuggester(self),
                id="character",
            )
            yield Label("", id="assign-hint", classes="hint", markup=False)
            yield Label("", id="assign-error", classes="field-error", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Assign (enter)", variant="primary", id="assign")
                yield Button("Cancel (esc)", id="cancel")
        yield Footer(show_command_palette=False)

    def on_mount(self) -> None:
        self._show_chats(self._chat)
        self._show_hint(self._chat)
        self.query_one("#character" if self._chat else "#chat", Input).focus()

    @on(Input.Changed, "#chat")
    def _chat_changed(self, event: Input.Changed) -> None:
        self._chat = event.value
        self._show_chats(event.value)
        self._show_hint(event.value)

    def _show_chats(self, typed: str) -> None:
        choices = self.query_one("#chat-choices", OptionList)
        matches = self.suggestions.matching_chats(typed)
        if typed.strip() in self.suggestions.chats:
            matches = []  # a known chat id is typed: nothing left to pick
        choices.set_options(
            Option(chat_option(chat, self.suggestions), id=chat) for chat in matches
        )
        choices.display = bool(matches)

    def action_pick_chat(self) -> None:
        """↓ in the chat input moves into the list of chats."""
        choices = self.query_one("#chat-choices", OptionList)
        if self.focused is not self.query_one("#chat") or not choices.display:
            return
        if choices.option_count:
            choices.highlighted = 0
            choices.focus()

    @on(OptionList.OptionSelected, "#chat-choices")
    def _chat_picked(self, event: OptionList.OptionSelected) -> None:
        chat = self.query_one("#chat", Input)
        chat.value = event.option.id or ""
        self.query_one("#character", Input).focus()

    def _show_hint(self, chat: str) -> None:
        names = self.suggestions.characters_for(chat)
        hint = ""
        if names:
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            where = "In this chat" if chat.strip() in self.suggestions.members else "Known"
            hint = f"{where}: {shown} (→ completes)"
        self.query_one("#assign-hint", Label).update(hint)

    @on(Input.Submitted, "#chat")
    def _next_field(self) -> None:
        chat = self.query_one("#chat", Input)
        chat.value = self.suggestions.resolve_chat(chat.value)
        self.query_one("#character", Input).focus()

    @on(Input.Submitted, "#character")
    @on(Button.Pressed, "#assign")
    def _submit(self) -> None:
        chat = self.suggestions.resolve_chat(self.chat_value)
        character = self.query_one("#character", Input).value.strip()
        missing = [name for name, value in (("chat", chat), ("character", character)) if not value]
        if missing:
            self.query_one("#assign-error", Label).update(f"Give a {' and a '.join(missing)}.")
            return
        self.dismiss(Assignment(self.slot, chat, character))

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
