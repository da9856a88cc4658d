"""The side-prompt manager: the templates, run one on a chat (with a range), and its preview.

The list shows every template with its triggers (and its own server, if any); keys create, edit
(:class:`~kvtui.tui.screens.sideprompt_editor.SidePromptEditor`, also Enter on the list),
enable/disable, duplicate, delete and recreate the built-ins. Run (ctrl+r) plans the chosen
template on the chosen chat and range (empty: the messages since its checkpoint) and runs it
through the service's KV-safe job runner. With previews on, the reply opens in the shared
free-text preview (:mod:`kvtui.tui.screens.text_preview`): Accept saves what its box holds,
Retry asks again, Cancel writes nothing. A template without manual runs is refused with the
service's message.
"""

from __future__ import annotations

import asyncio

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, OptionList, Select, Static
from textual.widgets.option_list import Option

from kvtui.memory.preview import TextPreview
from kvtui.sideprompts.runs import FAILURES, SideOutcome, SideRun
from kvtui.sideprompts.service import SidePromptService
from kvtui.sideprompts.templates import SidePrompt
from kvtui.tui.screens.sideprompt_editor import SidePromptEditor
from kvtui.tui.screens.text_preview import decide


def template_label(t: SidePrompt) -> str:
    on_ = [w for w, flag in (("after memory", t.triggers.after_memory),
           (f"every {t.triggers.interval}", bool(t.triggers.interval)),
           ("manual", t.triggers.manual)) if flag]  # fmt: skip
    state = "on " if t.enabled else "off"
    server = f" @ {t.server_url}{f' ({t.model})' if t.model else ''}" if t.server_url else ""
    mark = " (built-in)" if t.builtin else ""
    return f"[{state}] {t.name}{mark} - {', '.join(on_) or '-'}{server}"


class SidePromptsScreen(Screen[None]):
    BINDINGS = [
        Binding("escape", "close", "Close", id="sideprompts.close"),
        Binding("ctrl+r", "run", "Run", id="sideprompts.run"),
        Binding("ctrl+n", "new", "New", id="sideprompts.new"),
        Binding("ctrl+o", "edit", "Edit", id="sideprompts.edit"),
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

    def compose(self) -> ComposeResult:
        with Vertical(id="sideprompts"):
            yield Static("Side prompts", id="sideprompts-title")
            yield OptionList(id="sideprompts-list")
            with Horizontal():
                yield Select[str]([], prompt="Chat", id="sideprompts-chat", allow_blank=True)
                yield Input(placeholder="range X-Y (empty: since last run)", id="sideprompts-range")
                yield Button("Run (ctrl+r)", variant="primary", id="sideprompts-run")
                yield Button("Edit (ctrl+o)", id="sideprompts-edit")
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

    # -- editing -----------------------------------------------------------------------------

    def action_new(self) -> None:
        self.app.push_screen(SidePromptEditor(), lambda t: self._edited(None, t))

    @on(Button.Pressed, "#sideprompts-edit")
    @on(OptionList.OptionSelected, "#sideprompts-list")
    def action_edit(self) -> None:
        name = self.selected_name
        if name is None:
            return
        try:
            template = self.service.library.get(name)
        except FAILURES as err:
            self._status(str(err))
            return
        self.app.push_screen(SidePromptEditor(template), lambda t: self._edited(name, t))

    def _edited(self, name: str | None, template: SidePrompt | None) -> None:
        """Keep what the editor saved (``name`` None: a new template)."""
        if template is None:
            return
        library = self.service.library
        try:
            if name is None:
                kept = library.add(template.model_copy(update={"builtin": False}))
            else:
                data = template.model_dump(exclude={"builtin"})
                kept = library.update(name, **data)
        except FAILURES as err:
            self._status(str(err))
            return
        self._status(f"Saved the side prompt {kept.name}.")
        self._refresh_list(keep=kept.name)

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
            choose = self._decide if self.previews else None
            outcome = await self.service.run_manual(name, chat, range_text, choose)
        except FAILURES as err:
            outcome = SideOutcome(name, chat, "failed", message=str(err))
        finally:
            self.running = False
        self.outcome = outcome
        self._status(outcome.message or outcome.status)

    async def _decide(self, run: SideRun, preview: TextPreview) -> None:
        self.preview = preview

        async def again(p: TextPreview) -> None:
            await self.service.regenerate(run, p)

        title = f"{run.template.name}: messages {run.scene.start}-{run.scene.end}"
        await decide(self.app, title, preview, again)

    def action_close(self) -> None:
        self.app.pop_screen()

    def _status(self, text: str) -> None:
        self.status_text = text
        self.query_one("#sideprompts-status", Label).update(text)
