"""The prewarm screen: warm every chosen member of a chat before the conversation starts.

Members come from the SillyTavern data directory; muted ones are listed but unchecked. Start runs
``kvtui.prewarm.prewarm`` in this screen's worker; its progress messages replace each other in
the view, Esc or Cancel cancels the run (the in-flight request is cancelled on the server), and a
final message always arrives and says who was and was not warmed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import (
    Button,
    Footer,
    Input,
    Label,
    ProgressBar,
    RichLog,
    Select,
    SelectionList,
    Static,
)
from textual.widgets.selection_list import Selection

from kvtui.prewarm import Outcome, PlanError, PrewarmPlan, Progress, plan_prewarm, prewarm
from kvtui.service import KvService
from kvtui.sillytavern import Member


def member_label(member: Member, source: str) -> Text:
    text = Text(member.name)
    if member.muted:
        # Not "dim": a dimmed word vanishes in some themes, and muted is why it is unchecked.
        text.append("  (muted)", style="bold italic")
    if source:
        text.append(f"  {source} prompt", style="dim italic")
    else:
        text.append("  no prompt", style="dim italic")
    return text


def matching(members: tuple[Member, ...], query: str) -> list[Member]:
    """Members whose name contains ``query`` (case-insensitive); all when it is empty."""
    q = query.strip().casefold()
    return [m for m in members if q in m.name.casefold()]


@dataclass
class PrewarmProgress(Message):
    """One progress step of the running prewarm (posted from the worker)."""

    progress: Progress


class PrewarmScreen(Screen[None]):
    """Choose members of a chat and warm their caches, with progress and cancel."""

    BINDINGS = [
        Binding("escape", "cancel_or_close", "Cancel / close", id="prewarm.cancel"),
        Binding("ctrl+a", "select_all", "Select all", id="prewarm.select_all"),
        Binding("ctrl+n", "select_none", "Select none", id="prewarm.select_none"),
        Binding("ctrl+s", "start", "Start", id="prewarm.start"),
    ]

    def __init__(self, service: KvService, chat: str | None = None) -> None:
        super().__init__()
        self.service = service
        self.st_data = service.st_data
        self.recorder = service.recorder
        self.chat = chat
        self.plan: PrewarmPlan | None = None
        self.running = False
        self._checked: set[str] = set()
        self._shown = 0
        self._started = 0.0
        self._live = ""
        self.status_text = ""

    def compose(self) -> ComposeResult:
        with Vertical(id="prewarm"):
            yield Static("Prewarm", id="prewarm-title")
            yield Select[str]([], prompt="Chat", id="prewarm-chat", allow_blank=True)
            yield Input(placeholder="search members", id="prewarm-search")
            yield SelectionList[str](id="prewarm-members")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Start (ctrl+s)", variant="primary", id="prewarm-start")
                yield Button("All (ctrl+a)", id="prewarm-all")
                yield Button("None (ctrl+n)", id="prewarm-none")
                yield Button("Cancel (esc)", id="prewarm-cancel")
            yield Label("", id="prewarm-status", markup=False)
            yield ProgressBar(total=1, show_eta=False, id="prewarm-bar")
            yield RichLog(id="prewarm-log", markup=False, highlight=False, wrap=True)
        yield Footer()

    def _tick(self) -> None:
        """Keep the elapsed time moving while one long character is being warmed."""
        if self.running and self._live:
            self._status(f"{self._live}  {time.monotonic() - self._started:.1f} s")

    async def on_mount(self) -> None:
        self.set_interval(0.5, self._tick)
        if self.st_data is None:
            self._status(
                "No SillyTavern data directory is set (settings: st_dir), so there are no "
                "chats to prewarm."
            )
            return
        chats = await asyncio.to_thread(self.st_data.chats)
        options = [(f"{c.display_name}  ({c.chat_id})", c.chat_id) for c in chats]
        select = self.query_one("#prewarm-chat", Select)
        select.set_options(options)
        default = self.chat or self.service.current_chat
        if default is None and chats:
            groups = [c for c in chats if c.is_group]
            default = (groups or chats)[0].chat_id
        if default is not None and any(value == default for _, value in options):
            select.value = default
        else:
            await self._load_plan(default)

    @on(Select.Changed, "#prewarm-chat")
    async def _chat_chosen(self, event: Select.Changed) -> None:
        if isinstance(event.value, str):
            await self._load_plan(event.value)

    async def _load_plan(self, chat_id: str | None) -> None:
        if chat_id is None:
            self._status("Choose a chat.")
            return
        try:
            plan = await asyncio.to_thread(
                plan_prewarm, chat_id, self.st_data, self.recorder, self.service.settings
            )
        except PlanError as err:
            self._status(str(err))
            return
        self.plan = plan
        self.chat = plan.chat
        self._checked = set(plan.default_selection())
        self.query_one("#prewarm-title", Static).update(
            Text.assemble(("Prewarm  ", "bold"), plan.display_name)
        )
        self._show_members()
        self._status(
            f"{len(plan.members)} members; muted ones are unchecked. Start warms the checked ones."
        )

    def _show_members(self) -> None:
        if self.plan is None:
            return
        query = self.query_one("#prewarm-search", Input).value
        members = self.query_one("#prewarm-members", SelectionList)
        members.clear_options()
        members.add_options(
            [
                Selection(
                    member_label(m, self.plan.choices[m.name].source),
                    m.name,
                    m.name in self._checked,
                )
                for m in matching(self.plan.members, query)
            ]
        )

    @on(Input.Changed, "#prewarm-search")
    def _search(self) -> None:
        self._show_members()

    @on(SelectionList.SelectionToggled, "#prewarm-members")
    def _toggled(self, event: SelectionList.SelectionToggled[str]) -> None:
        name = event.selection.value
        if name in self._checked:
            self._checked.discard(name)
        else:
            self._checked.add(name)

    def action_select_all(self) -> None:
        if self.plan is not None and not self.running:
            self._checked = {m.name for m in self.plan.members}
            self._show_members()

    def action_select_none(self) -> None:
        if not self.running:
            self._checked.clear()
            self._show_members()

    @on(Button.Pressed, "#prewarm-all")
    def _all_pressed(self) -> None:
        self.action_select_all()

    @on(Button.Pressed, "#prewarm-none")
    def _none_pressed(self) -> None:
        self.action_select_none()

    @on(Button.Pressed, "#prewarm-start")
    def _start_pressed(self) -> None:
        self.action_start()

    @on(Button.Pressed, "#prewarm-cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel_or_close()

    def action_start(self) -> None:
        if self.running or self.plan is None:
            return
        order = [m.name for m in self.plan.members if m.name in self._checked]
        if not order:
            self._status("Nobody is checked.")
            return
        self.running = True
        self._started = time.monotonic()
        self.query_one("#prewarm-log", RichLog).clear()
        bar = self.query_one("#prewarm-bar", ProgressBar)
        bar.update(total=len(order), progress=0)
        self._run(self.plan, order)

    def action_cancel_or_close(self) -> None:
        search = self.query_one("#prewarm-search", Input)
        if self.running:
            self._status("Cancelling…")
            self.workers.cancel_group(self, "prewarm")
        elif search.value:
            search.value = ""  # Esc clears a typed search before it closes the screen
        else:
            self.dismiss(None)

    @work(exclusive=True, group="prewarm", exit_on_error=False, description="Prewarm")
    async def _run(self, plan: PrewarmPlan, order: list[str]) -> None:
        try:
            await prewarm(
                self.service,
                plan.chat,
                plan.selected(order),
                on_progress=self._post_progress,
            )
        finally:
            self.running = False

    def _post_progress(self, progress: Progress) -> None:
        self.post_message(PrewarmProgress(progress))

    def on_prewarm_progress(self, message: PrewarmProgress) -> None:
        progress = message.progress
        done = len(progress.done)
        # Cancelled characters were not warmed: the bar counts only those actually dealt with,
        # so it never reads 100 % after a cancel.
        handled = sum(1 for r in progress.done if r.outcome is not Outcome.CANCELLED)
        self.query_one("#prewarm-bar", ProgressBar).update(total=progress.total, progress=handled)
        log = self.query_one("#prewarm-log", RichLog)
        for result in progress.done[self._shown :]:
            if result.outcome is Outcome.WARMED:
                log.write(
                    Text.assemble(
                        ("✓ ", "green"),
                        f"{result.character}: {result.tokens} tokens in {result.seconds:.1f} s "
                        f"({result.source} prompt)",
                    )
                )
            else:
                mark = {"failed": "✗ ", "skipped": "– ", "cancelled": "· "}[result.outcome.value]
                log.write(
                    Text.assemble(
                        (mark, "red" if result.outcome is Outcome.FAILED else "yellow"),
                        f"{result.character}: {result.outcome.value}"
                        + (f" — {result.reason}" if result.reason else ""),
                    )
                )
        self._shown = done
        if progress.finished:
            warmed = [r.character for r in progress.done if r.outcome is Outcome.WARMED]
            missed = [r.character for r in progress.done if r.outcome is not Outcome.WARMED]
            verb = "Cancelled" if progress.cancelled else "Finished"
            self._status(
                f"{verb} in {progress.elapsed:.1f} s. Warmed: {', '.join(warmed) or 'none'}."
                + (f" Not warmed: {', '.join(missed)}." if missed else "")
            )
            self._shown = 0
            self._live = ""
        else:
            current = f"Warming {progress.current}" if progress.current else "Working"
            self._live = f"{current}… {done}/{progress.total}"
            self._status(f"{self._live}  {progress.elapsed:.1f} s")

    def _status(self, text: str) -> None:
        self.status_text = text
        self.query_one("#prewarm-status", Label).update(text)
