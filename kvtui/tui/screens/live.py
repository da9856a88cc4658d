"""The live view under the dashboard: server header, slot table, event log, job plumbing.

The table is refreshed by a single poll worker that re-arms its own timer when it finishes, so
polls never overlap; while the server is unreachable the delay backs off. Actions (in
``dashboard.py``) run as workers in the ``job`` group, one at a time: each shows what it is
doing in the activity line and reports once. Every worker's failure lands in
``on_worker_state_changed``, the one place errors are handled.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.notifications import SeverityLevel
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Label, LoadingIndicator
from textual.worker import Worker, WorkerState

from kvtui.chatref import with_titles
from kvtui.events import Event, Kind, Level
from kvtui.service import ConnectionState, KvService, SlotRow, Snapshot
from kvtui.settings import Settings
from kvtui.tui.errors import report_worker_error
from kvtui.tui.format import session_line
from kvtui.tui.lookups import chat_titles
from kvtui.tui.reports import Report
from kvtui.tui.widgets.event_log import EventLogPanel
from kvtui.tui.widgets.server_info import Retry, ServerInfo, model_name
from kvtui.tui.widgets.slot_table import SlotTable
from kvtui.warmth import SlotWarmth, WarmthLedger

MAX_RETRY_DELAY = 15.0
"""Longest wait between polls of an unreachable server, in seconds."""

EVENT_TOASTS = {
    Kind.SAVE,
    Kind.AUTOSAVE,
    Kind.LOAD,
    Kind.AUTOLOAD,
    Kind.EVICT,
    Kind.ROTATE,
    Kind.ERASE,
    Kind.CHAT_SWITCH,
}
"""Event kinds that raise a toast (warnings and errors always do)."""

_SEVERITY: dict[Level, SeverityLevel] = {
    Level.INFO: "information",
    Level.WARNING: "warning",
    Level.ERROR: "error",
}


def retry_delay(interval: float, failures: int) -> float:
    """The poll interval, doubled per consecutive failure, capped at ``MAX_RETRY_DELAY``."""
    if failures <= 0:
        return interval
    return min(interval * 2.0 ** (failures - 1), max(MAX_RETRY_DELAY, interval))


@dataclass
class ServiceEvent(Message):
    """An event from the service's event log, delivered on the UI's message queue."""

    event: Event
    covered: bool = False
    """A running job reports this event's kind itself (so no toast for it)."""


class LiveScreen(Screen[None]):
    """Shows the service's state as it changes. ``service`` is owned by the App."""

    def __init__(self, service: KvService, *, config_path: Path | None = None) -> None:
        super().__init__()
        self.service = service
        self.config_path = config_path
        self.snapshot: Snapshot | None = None
        self._failures = 0
        self._poll_error: str | None = None
        self._first_connect = True
        self.chat_titles: dict[str, str] = {}
        """SillyTavern's names of chat ids, shown in the table instead of the ids."""
        self._poll_timer: Timer | None = None
        self._unsubscribe: list[object] = []
        self._job: str | None = None
        self.covered_kinds: frozenset[Kind] = frozenset()
        """Event kinds the running job reports itself (no toast per event meanwhile)."""

    @property
    def settings(self) -> Settings:
        return self.service.settings

    def compose(self) -> ComposeResult:
        yield ServerInfo(id="server-info")
        yield SlotTable(id="slots")
        with Horizontal(id="activity"):
            yield LoadingIndicator(id="activity-spinner")
            yield Label("", id="activity-text", markup=False)
        yield EventLogPanel(id="events")
        # The palette's key is in the log's hint (always visible), not the footer: at 80
        # columns the footer needs every cell for the main actions.
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        log = self.query_one(EventLogPanel)
        log.border_title = "Events"
        log.border_subtitle = "? every key · ctrl+p every action"
        self.query_one(SlotTable).border_title = "Slots"
        self.query_one("#activity").display = False
        self.query_one(ServerInfo).show(self.service.snapshot())
        for event in self.service.events.recent(50):
            self.query_one(EventLogPanel).add_event(event)
        self._unsubscribe.append(self.service.events.subscribe(self._relay_service_event))
        self.query_one(SlotTable).focus()
        self.poll()
        self.read_chat_titles()

    @work(exclusive=True, group="lookup", exit_on_error=False, description="Reading chat names")
    async def read_chat_titles(self) -> None:
        """Learn SillyTavern's chat names (a thread: it reads the data directory)."""
        self.chat_titles = await asyncio.to_thread(chat_titles, self.settings.st_dir)
        log = self.query_one(EventLogPanel)
        if dict(log.titles) != self.chat_titles:
            log.titles = dict(self.chat_titles)
            log.rerender()
        if self.snapshot is not None:
            self.query_one(SlotTable).show_rows(
                self.snapshot.rows,
                now=self.snapshot.taken_at,
                titles=self.chat_titles,
                warmth=self.warmth(),
            )

    def ledger(self) -> WarmthLedger | None:
        """The proxy's per-turn accounting, when automatic mode runs in this app."""
        proxy = getattr(self.app, "proxy", None)
        return proxy.app.extras.ledger if proxy is not None else None

    def warmth(self) -> dict[int, SlotWarmth]:
        ledger = self.ledger()
        return {w.slot: w for w in ledger.slots()} if ledger is not None else {}

    def _relay_service_event(self, event: Event) -> None:
        # Subscribers run inside the service's call; hand the event to the UI's queue instead,
        # noting now (not when the message is handled) whether the running job covers it.
        self.post_message(ServiceEvent(event, covered=event.kind in self.covered_kinds))

    def on_unmount(self) -> None:
        for unsubscribe in self._unsubscribe:
            if callable(unsubscribe):
                unsubscribe()
        self._unsubscribe.clear()
        if self._poll_timer is not None:
            self._poll_timer.stop()

    # -- polling -----------------------------------------------------------------------------

    @work(exclusive=True, group="poll", exit_on_error=False, description="Polling llama-server")
    async def poll(self) -> None:
        """Poll once and re-arm the timer; a newer poll (``r``) cancels this one."""
        try:
            self.show_snapshot(await self.service.refresh())
            self._poll_error = None
        except Exception as err:
            # refresh() reports server trouble in the snapshot; this is a bug. Show it once,
            # not once per poll, and keep polling with backoff.
            self._failures += 1
            if repr(err) != self._poll_error:
                self._poll_error = repr(err)
                raise
        finally:
            self._schedule_poll()

    def _schedule_poll(self) -> None:
        if self._poll_timer is not None:
            self._poll_timer.stop()
        if self.is_attached:
            delay = retry_delay(self.settings.poll_interval, self._failures)
            self._poll_timer = self.set_timer(delay, self.poll)

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """Show one poll's result: the header, then the table updated in place."""
        if snapshot.state is ConnectionState.CONNECTED and self._first_connect:
            self._first_connect = False
            self.query_one(EventLogPanel).add_event(
                Event(
                    Kind.CONNECTION,
                    f"Connected to {snapshot.server_url}: {model_name(snapshot.model)}, "
                    f"{snapshot.total_slots} slots of {snapshot.n_ctx} tokens.",
                    time=snapshot.taken_at,
                )
            )
        self.snapshot = snapshot
        healthy = snapshot.state is ConnectionState.CONNECTED
        self._failures = 0 if healthy else self._failures + 1
        retry = None
        if not healthy:
            retry = Retry(self._failures, retry_delay(self.settings.poll_interval, self._failures))
        self.query_one(ServerInfo).show(snapshot, retry)
        table = self.query_one(SlotTable)
        table.show_rows(
            snapshot.rows, now=snapshot.taken_at, titles=self.chat_titles, warmth=self.warmth()
        )
        ledger = self.ledger()
        table.border_subtitle = session_line(ledger.summary()) if ledger is not None else ""
        # While the server does not answer, the rows are what kvtui last knew: say so.
        table.set_class(not healthy, "stale")
        table.border_title = (
            "Slots" if healthy else "Slots (last known: the server is not answering)"
        )

    # -- events, activity and errors ---------------------------------------------------------

    @on(ServiceEvent)
    def _service_event(self, message: ServiceEvent) -> None:
        event = message.event
        self.query_one(EventLogPanel).add_event(event)
        if not self.settings.notifications or message.covered:
            return
        if event.level is not Level.INFO or event.kind in EVENT_TOASTS:
            self.notify(
                with_titles(event.message, self.chat_titles),
                title=event.kind.value,
                severity=_SEVERITY[event.level],
                markup=False,
                # Routine events are in the log too: brief toasts leave it readable at 80x24.
                timeout=3 if event.level is Level.INFO else 8,
            )

    @contextmanager
    def busy(self, text: str) -> Iterator[None]:
        """Show ``text`` with a spinner while the block runs."""
        activity = self.query_one("#activity")
        self.query_one("#activity-text", Label).update(text)
        activity.display = True
        try:
            yield
        finally:
            activity.display = False

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """Every worker of this screen reports here: the one place errors are handled."""
        if event.state is not WorkerState.ERROR:
            return
        message = report_worker_error(self.app, event.worker)
        self.query_one(EventLogPanel).add_event(
            Event(kind=Kind.ERROR, message=message, level=Level.ERROR)
        )

    # -- jobs: one at a time, each reporting once ---------------------------------------------

    def claim(self, name: str) -> bool:
        """Reserve the job slot for ``name``; tell the user and refuse when one is running."""
        if self._job is not None:
            self.notify(f"Still busy: {self._job}. Try again when it finishes.", severity="warning")
            return False
        self._job = name
        return True

    @contextmanager
    def job(self, covers: frozenset[Kind] = frozenset()) -> Iterator[None]:
        """The body of a job worker: release the job slot and poll when it ends."""
        self.covered_kinds = covers
        try:
            yield
        finally:
            self.covered_kinds = frozenset()
            self._job = None
            if self.is_attached:
                self.poll()

    def report(self, report: Report) -> None:
        """A job's result as one toast (failures always; successes when notifications are on)."""
        if self.settings.notifications or report.severity != "information":
            self.notify(
                with_titles(report.message, self.chat_titles),
                title=report.title,
                severity=report.severity,
                markup=False,
            )

    @property
    def rows(self) -> tuple[SlotRow, ...]:
        """The slot rows of the latest poll."""
        return self.snapshot.rows if self.snapshot else ()

    def selected_chat(self) -> str | None:
        """The chat of the slot under the cursor, if it has one."""
        slot = self.query_one(SlotTable).selected_slot
        return next((row.chat for row in self.rows if row.slot == slot), None)

    def selected_row(self, *, need_character: bool = False) -> SlotRow | None:
        """The slot under the cursor, explaining why not when there is none."""
        table = self.query_one(SlotTable)
        slot = table.selected_slot
        row = next((row for row in self.rows if row.slot == slot), None)
        if row is None:
            self.notify("No slot selected (the server has not answered yet).", severity="warning")
            return None
        if need_character and not row.character:
            self.notify(
                f"Slot {row.slot} has no character. Assign one with c first.", severity="warning"
            )
            return None
        return row
