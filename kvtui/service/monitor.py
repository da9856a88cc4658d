"""Watching llama-server: polls, connection changes, restart detection, the dashboard's snapshot.

A poll reads ``/slots`` (and ``/props`` when the server is new or came back), reconciles the book
with what the server still holds, and returns a frozen :class:`Snapshot`. Polls never overlap and
a recent one may be reused, since the proxy polls around every generation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from kvtui.events import Kind
from kvtui.llama import LlamaError, ModelLoading, ServerUnreachable
from kvtui.llama.models import SlotState
from kvtui.service.core import ServiceCore
from kvtui.service.outcomes import ConnectionState, SlotRow, Snapshot
from kvtui.slots import SlotRecord
from kvtui.store import StoreError


class Monitor:
    """Polls the server for one service and keeps the book in step with it."""

    def __init__(self, core: ServiceCore) -> None:
        self.core = core
        self._last_task_ids: dict[int, int] = {}
        self._last_poll: tuple[float, Snapshot] | None = None
        self._poll_lock = asyncio.Lock()

    def forget_server(self) -> None:
        """A different server (new settings): nothing seen so far applies to it."""
        self._last_task_ids.clear()
        self._last_poll = None

    async def refresh(self, *, max_age: float = 0.0) -> Snapshot:
        """Poll the server once and return what the dashboard shows. Never raises.

        With ``max_age``, a poll younger than that many seconds is reused instead (the proxy
        polls around every generation; back-to-back requests need not ask twice).
        """
        async with self._poll_lock:  # overlapping polls could see task ids go backwards
            if max_age and self._last_poll and time.monotonic() - self._last_poll[0] < max_age:
                return self._last_poll[1]
            return await self._refresh()

    async def _refresh(self) -> Snapshot:
        core = self.core
        previous = core.state
        slots: list[SlotState] = []
        error: str | None = None
        client = core.client
        before = core.book.snapshot()  # a record changed while the poll runs is not its to judge
        try:
            if core.props is None or previous is not ConnectionState.CONNECTED:
                core.adopt_props(await client.props())
            slots = await client.slots()
            core.state = ConnectionState.CONNECTED
        except ModelLoading as err:
            core.state, error = ConnectionState.LOADING, str(err)
        except (ServerUnreachable, LlamaError) as err:
            core.state, error = ConnectionState.UNREACHABLE, str(err)
        if client is not core.client:
            # The settings changed the server while this poll ran: its answer is stale.
            return self.snapshot((), None)
        if core.state is not previous:
            self._on_state_change(previous, error)
        if slots:
            self._reconcile(slots, before)
        snap = self.snapshot(slots, error)
        self._last_poll = (time.monotonic(), snap) if slots else None
        return snap

    def _on_state_change(self, previous: ConnectionState, error: str | None) -> None:
        state, events = self.core.state, self.core.events
        if state is ConnectionState.CONNECTED:
            if previous is not ConnectionState.UNKNOWN:
                events.info(Kind.CONNECTION, "Connected to llama-server again.")
        elif state is ConnectionState.UNREACHABLE:
            events.error(Kind.CONNECTION, error or "llama-server is unreachable.")
        elif state is ConnectionState.LOADING:
            events.warning(Kind.CONNECTION, "llama-server is loading its model.")

    def _reconcile(self, slots: Sequence[SlotState], polled: Sequence[SlotRecord] = ()) -> None:
        """Notice what the server lost (a restart) and forget it in the book.

        A restarted server numbers its tasks from zero again, and a slot that never ran a task
        since the restart shows no ``id_task``. kvtui cannot see a restore into such a slot in
        ``/slots``, so it only trusts its own count while the task ids keep growing.
        """
        book = self.core.book
        if not self._last_task_ids:
            # the slots whose record the poll's answer is about (routing may have seated a
            # character since it began, before its first task shows)
            same = {r.slot for r in polled if r is book.record(r.slot)} if polled else None
            self._reconcile_first([s for s in slots if same is None or s.id in same])
        lost = False
        for slot in slots:
            task = slot.id_task
            before = self._last_task_ids.get(slot.id)
            if task is not None:
                if before is not None and task < before:
                    lost = True
                self._last_task_ids[slot.id] = task
            elif before is not None:
                lost = True
        if lost:
            self.core.server_restarts += 1
            self._last_task_ids.clear()
            self._drop_cacheless(range(book.n_slots))
            forgotten = book.mark_all_lost()
            if forgotten:
                names = ", ".join(forgotten)
                self.core.events.warning(
                    Kind.CONNECTION,
                    f"llama-server restarted: the caches of {names} are gone from memory; "
                    "each is restored from its latest save on its next request.",
                )
            self.core.persist()
        for slot in slots:
            if slot.n_prompt_tokens is not None and slot.id < book.n_slots:
                book.set_tokens(slot.id, slot.n_prompt_tokens)

    def _reconcile_first(self, slots: Sequence[SlotState]) -> None:
        """First look at the server since kvtui started: did it restart while kvtui was away?

        A slot that has run no task since the server started shows no ``id_task``. If the
        book says a character is there with work in it, that work is gone (or was a restore
        that nothing used since, which restoring again repeats exactly), so the character is
        restored from its latest save on its next request. One without a save is dropped.
        """
        book = self.core.book
        idle = [s.id for s in slots if s.id_task is None and s.id < book.n_slots]
        dropped = self._drop_cacheless(idle)
        fresh = [
            slot
            for slot in idle
            if book.record(slot).occupied
            and (book.record(slot).autoload_done or book.record(slot).tokens)
        ]
        forgotten = book.mark_lost(fresh)
        if dropped and not forgotten:
            self.core.persist()
        if forgotten:
            self.core.server_restarts += 1  # what it held is gone, its memory too (losses_seen)
            self.core.events.warning(
                Kind.CONNECTION,
                f"llama-server no longer holds the caches of {', '.join(forgotten)}; each is "
                "restored from its latest save on its next request.",
            )
            self.core.persist()

    def _drop_cacheless(self, slots: Iterable[int]) -> list[str]:
        """Let go of the book's entries in ``slots`` (which hold nothing on the server now)
        whose character has no save to be restored from either: nothing of theirs is warm
        anywhere, so listing them would only keep a slot from others. Said once in the event
        log; each gets a slot again on its next request."""
        book, store = self.core.book, self.core.store
        dropped: list[str] = []
        for slot in slots:
            record = book.record(slot)
            if record.character is None:
                continue
            if store is not None and record.chat is not None:
                try:
                    if store.latest(record.chat, record.character) is not None:
                        continue  # restored from it on its next request
                except (StoreError, OSError):
                    continue  # cannot tell: keep it
            book.release(slot)
            dropped.append(record.character)
        if dropped:
            self.core.events.warning(
                Kind.CONNECTION,
                f"Dropped {', '.join(dropped)} from the slot book: llama-server holds no cache "
                "for them and no save exists; each gets a slot again on its next request.",
            )
        return dropped

    def snapshot(self, slots: Sequence[SlotState] = (), error: str | None = None) -> Snapshot:
        core = self.core
        settings, book, props = core.settings, core.book, core.props
        by_id = {s.id: s for s in slots}
        rows = []
        every = settings.autosave_every if settings.autosave_enabled else None
        for record in book.snapshot():
            state = by_id.get(record.slot)
            rows.append(
                SlotRow(
                    slot=record.slot,
                    n_ctx=state.n_ctx if state else (props.n_ctx if props else 0),
                    processing=bool(state and state.is_processing),
                    n_decoded=state.n_decoded if state else None,
                    n_remain=state.n_remain if state else None,
                    tokens=record.tokens,
                    chat=record.chat,
                    character=record.character,
                    usage=record.usage,
                    messages_until_save=(
                        book.messages_until_save(record.slot, every)
                        if every and record.character
                        else None
                    ),
                    last_save_at=record.last_save_at,
                    last_save_file=record.last_save_file,
                )
            )
        return Snapshot(
            state=core.state,
            server_url=settings.server_url,
            model=props.model if props else None,
            build_info=props.build_info if props else None,
            total_slots=book.n_slots,
            n_ctx=props.n_ctx if props else None,
            save_dir=settings.save_dir,
            rows=tuple(rows),
            error=error,
            taken_at=datetime.now(UTC),
        )
