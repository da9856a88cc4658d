"""The side-prompt manager: the templates, run one on a chat (with a range), and its preview.

The list shows every template with its triggers; keys enable/disable, duplicate, delete and
recreate the built-ins. Run (ctrl+r) plans the chosen template on the chosen chat and range
(empty: the messages since its checkpoint) and runs it through the service's KV-safe job runner.
With previews on, the reply lands in an editable text box: Accept saves what the box holds
(an edit included), Retry asks again, Cancel writes nothing. A template without manual runs is
refused with the service's message.
"""

from __future__ import annotations

import asyncio

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, OptionList, Select, Static, TextArea
from textual.widgets.option_list import Option

from kvtui.memory.preview import PreviewError, PreviewState, TextPreview
from kvtui.sideprompts.service import FAILURES, SideOutcome, SidePromptService, SideRun
from kvtui.sideprompts.templates import SidePrompt


def template_label(t: SidePrompt) -> str:
    on_ = [w for w, flag in (("after memory", t.triggers.after_memory),
           (f"every {t.triggers.interval}", bool(t.triggers.interval)),
           ("manual", t.triggers.manual)) if flag]  # fmt: skip
    state = "on " if t.enabled else "off"
    return f"[{state}] {t.name}{' (built-in)' if t.builtin else ''} - {', '.join(on_) or '-'}"


class SidePromptsScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "close", "Close", id="sideprompts.close"),
        Binding("ctrl+r", "run", "Run", id="sideprompts.run"),
        Binding("ctrl+e", "toggle_enabled", "Enable/disable", id="sideprompts.toggle"),
        Binding("ctrl+d", "duplicate", "Duplicate", id="sideprompts.duplicate"),
        Binding("ctrl+x", "delete", "Delete", id="sideprompts.delete"),
        Binding("ctrl+b", "builtins", "Recreate built-ins", id="sideprompts.builtins"),
    ]

    def __init__(
        self, service: SidePromptService, chat: str | None = None, *, previews: bool = True
    ) -> None:
        super().__init__()
        self.service = service
        self.chat = chat
        self.previews = previews
        self.running = False
        self.status_text = ""
        self.outcome: SideOutcome | None = None
        self.preview: TextPreview | None = None
        self._decided: asyncio.Event | None = None
        self._run: SideRun | None = None

    def compose(self) -> ComposeResult:
        with Vertical(id="sideprompts"):
            yield Static("Side prompts", id="sideprompts-title")
            yield OptionList(id="sideprompts-list")
            with Horizontal():
                yield Select[str]([], prompt="Chat", id="sideprompts-chat", allow_blank=True)
                yield Input(placeholder="range X-Y (empty: since last run)", id="sideprompts-range")
                yield Button("Run (ctrl+r)", variant="primary", id="sideprompts-run")
            yield TextArea("", id="sideprompts-preview")
            with Horizontal(id="sideprompts-decide"):
                yield Button("Accept", variant="success", id="sideprompts-accept", disabled=True)
                yield Button("Retry", id="sideprompts-retry", disabled=True)
                yield Button("Cancel", id="sideprompts-cancel", disabled=True)
            yield Label("", id="sideprompts-status", markup=False)
        yield Footer()

    async def on_mount(self) -> None:
        self._refresh_list()
        chats = await asyncio.to_thread(self.service.st_data.chats)
        options = [(f"{c.display_name}  ({c.chat_id})", c.chat_id) for c in chats]
        select = self.query_one("#sideprompts-chat", Select)
        select.set_options(options)
        if self.chat is not None and any(v == self.chat for _, v in options):
            select.value = self.chat
        elif options:
            select.value = options[0][1]

    # -- the list ----------------------------------------------------------------------------

    def _refresh_list(self, keep: str | None = None) -> None:
        try:
            items = self.service.library.all()
        except FAILURES as err:
            self._status(str(err))
            return
        listing = self.query_one("#sideprompts-list", OptionList)
        current = keep or self.selected_name
        listing.clear_options()
        listing.add_options([Option(template_label(t), id=t.name) for t in items])
        names = [t.name for t in items]
        if names:
            listing.highlighted = names.index(current) if current in names else 0

    @property
    def selected_name(self) -> str | None:
        listing = self.query_one("#sideprompts-list", OptionList)
        if listing.highlighted is None or listing.option_count == 0:
            return None
        return listing.get_option_at_index(listing.highlighted).id

    def select_template(self, name: str) -> None:
        self._refresh_list(keep=name)

    def _library_action(self, what: str) -> None:
        name = self.selected_name
        library = self.service.library
        try:
            if what == "builtins":
                library.reset_builtins()
                self._status("The built-ins are back as shipped; your own are unchanged.")
            elif name is None:
                return
            elif what == "toggle":
                t = library.update(name, enabled=not library.get(name).enabled)
                self._status(f"{t.name} is {'enabled' if t.enabled else 'disabled'}.")
            elif what == "duplicate":
                name = library.duplicate(name).name
                self._status(f"Copied to {name}.")
            elif what == "delete":
                library.delete(name)
                self._status(f"Deleted {name}.")
                name = None
        except FAILURES as err:
            self._status(str(err))
        self._refresh_list(keep=name)

    def action_toggle_enabled(self) -> None:
        self._library_action("toggle")

    def action_duplicate(self) -> None:
        self._library_action("duplicate")

    def action_delete(self) -> None:
        self._library_action("delete")

    def action_builtins(self) -> None:
        self._library_action("builtins")

    # -- running -----------------------------------------------------------------------------

    @on(Button.Pressed, "#sideprompts-run")
    def _run_pressed(self) -> None:
        self.action_run()

    def action_run(self) -> None:
        if self.running:
            self._status("A side prompt is running; wait for it or cancel its preview.")
            return
        name = self.selected_name
        chat = self.query_one("#sideprompts-chat", Select).value
        if name is None or not isinstance(chat, str):
            self._status("Choose a template and a chat first.")
            return
        range_text = self.query_one("#sideprompts-range", Input).value.strip() or None
        self.running = True
        self.outcome = None
        self._status(f"Running {name}…")
        self._work(name, chat, range_text)

    @work(exclusive=True, group="sideprompt")
    async def _work(self, name: str, chat: str, range_text: str | None) -> None:
        try:
            decide = self._decide if self.previews else None
            outcome = await self.service.run_manual(name, chat, range_text, decide)
        except FAILURES as err:
            outcome = SideOutcome(name, chat, "failed", message=str(err))
        finally:
            self.running = False
            self._show_buttons(False)
        self.outcome = outcome
        self._status(outcome.message or outcome.status)

    async def _decide(self, run: SideRun, preview: TextPreview) -> None:
        self._run, self.preview = run, preview
        self._decided = asyncio.Event()
        self._offer(preview)
        await self._decided.wait()

    def _offer(self, preview: TextPreview) -> None:
        self.query_one("#sideprompts-preview", TextArea).text = preview.text
        ready = preview.state is PreviewState.READY
        self._show_buttons(True, accept=ready)
        self._status(preview.error or "Edit the text if you like, then Accept, Retry or Cancel.")

    def _show_buttons(self, on_: bool, *, accept: bool = True) -> None:
        self.query_one("#sideprompts-accept", Button).disabled = not (on_ and accept)
        self.query_one("#sideprompts-retry", Button).disabled = not on_
        self.query_one("#sideprompts-cancel", Button).disabled = not on_

    @on(Button.Pressed, "#sideprompts-accept")
    def accept(self) -> None:
        preview = self.preview
        if preview is None or self._decided is None:
            return
        text = self.query_one("#sideprompts-preview", TextArea).text
        try:
            if text.strip() != preview.text:
                preview.edit(text)
            preview.accept()
        except PreviewError as err:
            self._status(str(err))
            return
        self._decided.set()

    @on(Button.Pressed, "#sideprompts-cancel")
    def cancel(self) -> None:
        if self.preview is not None and self._decided is not None:
            self.preview.cancel()
            self._decided.set()

    @on(Button.Pressed, "#sideprompts-retry")
    def retry(self) -> None:
        if self.preview is not None and self._run is not None:
            self._show_buttons(False)
            self._status("Asking again…")
            self._retry(self._run, self.preview)

    @work(exclusive=True, group="sideprompt-retry")
    async def _retry(self, run: SideRun, preview: TextPreview) -> None:
        try:
            preview.retry()
            await self.service.regenerate(run, preview)
        except FAILURES as err:
            preview.state = PreviewState.WAITING
            preview.fail(str(err))
        self._offer(preview)

    def action_close(self) -> None:
        if self.preview is not None and self._decided is not None and not self._decided.is_set():
            self.cancel()
        self.app.pop_screen()

    def _status(self, text: str) -> None:
        self.status_text = text
        self.query_one("#sideprompts-status", Label).update(text)
