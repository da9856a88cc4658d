"""The service layer's front door: one object that the CLI, the dashboard and the proxy share.

``KvService`` owns the llama-server client, the save store, the slot book and (when configured)
the SillyTavern data directory. It performs every operation the seed describes — save, tagged
save, restore, multi-load, erase, clear, eviction with save-first, autosave with rotation,
autoload, chat switch — and reports each one to the event log. Screens and commands never talk
HTTP themselves; they call this and read its frozen snapshots.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from kvtui.atomic import write_atomic
from kvtui.events import EventLog, Kind
from kvtui.llama import LlamaClient, LlamaError, ModelLoading, RestoreFailed, ServerUnreachable
from kvtui.llama.models import Props, SlotState
from kvtui.outcomes import (
    ConnectionState,
    LoadOutcome,
    RouteDecision,
    SaveOutcome,
    ServiceError,
    SlotRow,
    Snapshot,
)
from kvtui.settings import Settings
from kvtui.slots import Allocation, GenType, SlotBook, SlotBookError, SlotRecord
from kvtui.store import SaveEntry, SaveMeta, SaveStore, is_valid_save
from kvtui.store.names import normalize

__all__ = [
    "ConnectionState",
    "KvService",
    "LoadOutcome",
    "RouteDecision",
    "SaveOutcome",
    "ServiceError",
    "SlotRow",
    "Snapshot",
]


class KvService:
    """kvtui's operations on one llama-server and one save directory."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: LlamaClient | None = None,
        events: EventLog | None = None,
    ) -> None:
        self.settings = settings
        self.events = events or EventLog()
        self.client = client or LlamaClient(
            settings.server_url, api_key=settings.api_key, save_dir=settings.save_dir
        )
        self.store: SaveStore | None = SaveStore(settings.save_dir) if settings.save_dir else None
        self.book = SlotBook.load(settings.book_path)
        self.props: Props | None = None
        self.state = ConnectionState.UNKNOWN
        self.current_chat: str | None = None
        self._lock = asyncio.Lock()
        self._last_task_ids: dict[int, int] = {}
        self._last_error: str | None = None
        self._last_poll: tuple[float, Snapshot] | None = None
        self._poll_lock = asyncio.Lock()
        self._persisted: tuple[Path, str] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        self.persist()
        await self.client.aclose()

    async def __aenter__(self) -> KvService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def lock(self) -> asyncio.Lock:
        """Held while the book and the slots are changed; one operation at a time."""
        return self._lock

    async def watch_saves(self, stop_event: asyncio.Event) -> None:
        """Keep the save index current from file-system events until ``stop_event`` is set.

        While it runs, lookups (autoload's latest save, rotation, the picker) use the index
        instead of rescanning a directory that may hold tens of thousands of saves.
        """
        if self.store is not None:
            await self.store.watch(lambda: None, stop_event)

    def persist(self) -> None:
        """Write the slot book atomically (it survives a crash or a restart of kvtui).

        Unchanged books are not written again: swipes and polls change nothing, and each
        write is fsynced on the event loop the proxy's streams share.
        """
        text = self.book.to_json()
        target = self.settings.book_path
        if self._persisted == (target, text):
            return
        try:
            write_atomic(target, text)
        except OSError as err:
            self.events.error(Kind.ERROR, f"Could not write the slot book: {err}")
            return
        self._persisted = (target, text)

    async def connect(self) -> Props:
        """Read the server's props and size the book to its slots."""
        props = await self.client.props()
        self._adopt_props(props)
        return props

    def _adopt_props(self, props: Props) -> None:
        if self.book.n_slots != props.total_slots:
            dropped = self.book.resize(props.total_slots)
            for record in dropped:
                if record.character:
                    self.events.warning(
                        Kind.CONNECTION,
                        f"Slot {record.slot} no longer exists; {record.character} was dropped.",
                    )
            self.persist()
        self.props = props

    # -- polling -----------------------------------------------------------------------------

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
        previous = self.state
        slots: list[SlotState] = []
        error: str | None = None
        try:
            if self.props is None or previous is not ConnectionState.CONNECTED:
                self._adopt_props(await self.client.props())
            slots = await self.client.slots()
            self.state = ConnectionState.CONNECTED
        except ModelLoading as err:
            self.state, error = ConnectionState.LOADING, str(err)
        except ServerUnreachable as err:
            self.state, error = ConnectionState.UNREACHABLE, str(err)
        except LlamaError as err:
            self.state, error = ConnectionState.UNREACHABLE, str(err)
        if self.state is not previous:
            self._on_state_change(previous, error)
        if slots:
            self._reconcile(slots)
        snap = self.snapshot(slots, error)
        self._last_poll = (time.monotonic(), snap) if slots else None
        return snap

    def _on_state_change(self, previous: ConnectionState, error: str | None) -> None:
        if self.state is ConnectionState.CONNECTED:
            if previous is not ConnectionState.UNKNOWN:
                self.events.info(Kind.CONNECTION, "Connected to llama-server again.")
        elif self.state is ConnectionState.UNREACHABLE:
            self.events.error(Kind.CONNECTION, error or "llama-server is unreachable.")
        elif self.state is ConnectionState.LOADING:
            self.events.warning(Kind.CONNECTION, "llama-server is loading its model.")

    def _reconcile(self, slots: Sequence[SlotState]) -> None:
        """Notice what the server lost (a restart) and forget it in the book.

        A restarted server numbers its tasks from zero again, and a slot that never ran a task
        since the restart shows no ``id_task``. kvtui cannot see a restore into such a slot in
        ``/slots``, so it only trusts its own count while the task ids keep growing.
        """
        if not self._last_task_ids:
            self._reconcile_first(slots)
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
            self._last_task_ids.clear()
            forgotten = self.book.mark_all_lost()
            if forgotten:
                names = ", ".join(forgotten)
                self.events.warning(
                    Kind.CONNECTION,
                    f"llama-server restarted: the caches of {names} are gone from memory; "
                    "each is restored from its latest save on its next request.",
                )
            self.persist()
        for slot in slots:
            if slot.n_prompt_tokens is not None and slot.id < self.book.n_slots:
                self.book.set_tokens(slot.id, slot.n_prompt_tokens)

    def _reconcile_first(self, slots: Sequence[SlotState]) -> None:
        """First look at the server since kvtui started: did it restart while kvtui was away?

        A slot that has run no task since the server started shows no ``id_task``. If the
        book says a character is there with work in it, that work is gone (or was a restore
        that nothing used since, which restoring again repeats exactly), so the character is
        restored from its latest save on its next request.
        """
        fresh = [
            s.id
            for s in slots
            if s.id_task is None
            and s.id < self.book.n_slots
            and self.book.record(s.id).occupied
            and (self.book.record(s.id).autoload_done or self.book.record(s.id).tokens)
        ]
        forgotten = self.book.mark_lost(fresh)
        if forgotten:
            self.events.warning(
                Kind.CONNECTION,
                f"llama-server no longer holds the caches of {', '.join(forgotten)}; each is "
                "restored from its latest save on its next request.",
            )
            self.persist()

    def snapshot(self, slots: Sequence[SlotState] = (), error: str | None = None) -> Snapshot:
        by_id = {s.id: s for s in slots}
        rows = []
        every = self.settings.autosave_every if self.settings.autosave_enabled else None
        for record in self.book.snapshot():
            state = by_id.get(record.slot)
            rows.append(
                SlotRow(
                    slot=record.slot,
                    n_ctx=state.n_ctx if state else (self.props.n_ctx if self.props else 0),
                    processing=bool(state and state.is_processing),
                    n_decoded=state.n_decoded if state else None,
                    n_remain=state.n_remain if state else None,
                    tokens=record.tokens,
                    chat=record.chat,
                    character=record.character,
                    usage=record.usage,
                    messages_until_save=(
                        self.book.messages_until_save(record.slot, every)
                        if every and record.character
                        else None
                    ),
                    last_save_at=record.last_save_at,
                    last_save_file=record.last_save_file,
                )
            )
        return Snapshot(
            state=self.state,
            server_url=self.settings.server_url,
            model=self.props.model if self.props else None,
            build_info=self.props.build_info if self.props else None,
            total_slots=self.book.n_slots,
            n_ctx=self.props.n_ctx if self.props else None,
            save_dir=self.settings.save_dir,
            rows=tuple(rows),
            error=error,
            taken_at=datetime.now(UTC),
        )

    # -- saves -------------------------------------------------------------------------------

    def require_store(self) -> SaveStore:
        if self.store is None:
            raise ServiceError(
                "No save directory is set. Give kvtui the server's --slot-save-path directory "
                "with --save-dir DIR (or save_dir in the config file)."
            )
        return self.store

    async def _ensure_props(self) -> Props:
        if self.props is None:
            await self.connect()
        assert self.props is not None
        return self.props

    async def save_slot(
        self,
        slot: int,
        *,
        chat: str | None = None,
        character: str | None = None,
        tag: str | None = None,
        autosave: bool = False,
    ) -> SaveOutcome:
        """Save one slot to a new file (see :meth:`_save_slot`); one operation at a time."""
        async with self._lock:
            return await self._save_slot(
                slot, chat=chat, character=character, tag=tag, autosave=autosave
            )

    async def _save_slot(
        self,
        slot: int,
        *,
        chat: str | None = None,
        character: str | None = None,
        tag: str | None = None,
        autosave: bool = False,
        track: bool = True,
    ) -> SaveOutcome:
        """Save one slot to a new file named by the seed's scheme; rotate when untagged.

        A save that turns out empty (``n_saved == 0``) or below the configured minimum is
        removed again — only the new file, never an older save.
        """
        store = self.require_store()
        props = await self._ensure_props()
        self._check_slot(slot)
        record = self.book.record(slot)
        chat = chat or record.chat
        character = character or record.character
        if not chat or not character:
            raise ServiceError(
                f"Slot {slot} has no character assigned. Assign one first, or give "
                "--chat and --character."
            )
        filename = store.new_filename(chat, character, tag=tag)
        result = await self.client.save(slot, filename)
        try:
            on_disk = store.path_for(filename).stat().st_size
        except OSError:
            on_disk = -1
        if on_disk != result.n_written or not is_valid_save(
            result.n_saved,
            result.n_written,
            min_tokens=max(1, self.settings.min_save_tokens),
            min_bytes=self.settings.min_save_bytes,
        ):
            store.delete(filename)  # only the new file: older saves are never touched
            if result.n_saved == 0:
                reason = "the slot is empty"
            elif result.n_written == 0 or on_disk != result.n_written:
                reason = (
                    f"llama-server could not write the file ({result.n_written} bytes reported, "
                    f"{max(on_disk, 0)} on disk): is its disk full?"
                )
            else:
                reason = f"{result.n_saved} tokens / {result.n_written} bytes is below the minimum"
            raise ServiceError(f"Save of slot {slot} discarded: {reason}.")
        now = datetime.now(UTC)
        store.write_meta(
            filename,
            SaveMeta(
                chat=chat,
                character=character,
                tag=tag,
                n_saved=result.n_saved,
                n_written=result.n_written,
                model=props.model,
                build_info=props.build_info,
                n_ctx=props.n_ctx,
                slot=slot,
                saved_at=now,
            ),
        )
        if track:
            # A save names who is in the slot; the book follows (an eviction's farewell save
            # passes track=False: the book already holds the newcomer).
            if record.chat != chat or record.character != character:
                self.book.assign(slot, chat, character)
            self.book.mark_saved(slot, filename, now)
            self.book.set_tokens(slot, result.n_saved)
        rotated: list[str] = []
        if tag is None:
            rotated = store.rotate(chat, character, keep=self.settings.max_autosaves)
        self.persist()
        what = f"tag '{tag}'" if tag else ("autosave" if autosave else "save")
        self.events.info(
            Kind.AUTOSAVE if autosave else Kind.SAVE,
            f"Saved {character} ({chat}) from slot {slot}: {result.n_saved} tokens, {what}.",
        )
        if rotated:
            self.events.info(
                Kind.ROTATE,
                f"Rotated {len(rotated)} old autosave(s) of {character} ({chat}).",
            )
        return SaveOutcome(
            slot=slot,
            chat=chat,
            character=character,
            filename=filename,
            n_saved=result.n_saved,
            n_written=result.n_written,
            tag=tag,
            rotated=tuple(rotated),
        )

    async def save_all(self, tag: str | None = None) -> list[SaveOutcome | ServiceError]:
        """Save every slot that has a character (the seed's "save now" and "save with tag")."""
        results: list[SaveOutcome | ServiceError] = []
        for record in self.book.snapshot():
            if not record.character:
                continue
            try:
                results.append(await self.save_slot(record.slot, tag=tag))
            except (ServiceError, LlamaError) as err:
                self.events.error(Kind.SAVE, f"Slot {record.slot}: {err}")
                results.append(ServiceError(f"slot {record.slot}: {err}"))
        return results

    # -- loads -------------------------------------------------------------------------------

    def _entry(self, filename: str) -> SaveEntry:
        store = self.require_store()
        store.path_for(filename)  # refuses names that escape the directory
        entry = store.get(filename)
        if entry is None:
            raise ServiceError(f"No save file named {filename!r} in {store.directory}.")
        return entry

    async def load(
        self, filename: str, slot: int | None = None, *, protected: Iterable[int] = ()
    ) -> LoadOutcome:
        """Restore a save into ``slot``, or into the slot the seed's allocation picks."""
        async with self._lock:
            return await self._load(filename, slot, protected=protected)

    async def _load(
        self, filename: str, slot: int | None, *, protected: Iterable[int]
    ) -> LoadOutcome:
        entry = self._entry(filename)
        await self._ensure_props()
        evicted_name: str | None = None
        if slot is None:
            allocation = self._allocate(entry.chat, entry.character, protected)
            slot = allocation.slot
            evicted = allocation.evicted
            if evicted is not None and evicted.chat and evicted.character:
                evicted_name = evicted.character
                saved = await self._evict(evicted)
                if saved is None and evicted.usage >= 1 and self.store is not None:
                    # Its save failed: put it back rather than restore over unsaved work.
                    self.book.assign(slot, evicted.chat, evicted.character)
                    self.persist()
                    raise ServiceError(
                        f"Could not save {evicted.character} before evicting it; "
                        f"{entry.character} was not loaded."
                    )
        else:
            self._check_slot(slot)
            await self._save_before_replacing(slot, entry.chat, entry.character)
        try:
            result = await self.client.restore(slot, entry.filename)
        except RestoreFailed:
            # The server cleared the slot when the restore failed: nobody is in it any more.
            self.book.release(slot)
            self.persist()
            raise
        self.book.assign(slot, entry.chat, entry.character)
        self.book.mark_loaded(slot, entry.filename, result.n_restored)
        self.persist()
        other = self.current_chat is not None and not _same(entry.chat, self.current_chat)
        note = f" (loaded from chat {entry.chat})" if other else ""
        self.events.info(
            Kind.LOAD,
            f"Loaded {entry.character} into slot {slot}: {result.n_restored} tokens from "
            f"{entry.timestamp.astimezone():%Y-%m-%d %H:%M:%S}{note}.",
        )
        return LoadOutcome(
            slot=slot,
            chat=entry.chat,
            character=entry.character,
            filename=entry.filename,
            n_restored=result.n_restored,
            from_other_chat=other,
            evicted=evicted_name,
        )

    async def load_many(self, filenames: Sequence[str]) -> list[LoadOutcome]:
        """Load several characters at once; none evicts another loaded in the same batch."""
        protected: set[int] = set()
        outcomes: list[LoadOutcome] = []
        for filename in filenames:
            try:
                outcome = await self.load(filename, protected=protected)
            except (ServiceError, LlamaError) as err:
                self.events.error(Kind.LOAD, f"{filename}: {err}")
                outcomes.append(
                    LoadOutcome(
                        slot=-1,
                        chat="",
                        character=filename,
                        filename=filename,
                        n_restored=0,
                        from_other_chat=False,
                        error=str(err),
                    )
                )
                continue
            protected.add(outcome.slot)
            outcomes.append(outcome)
        return outcomes

    async def _save_before_replacing(self, slot: int, chat: str, character: str) -> None:
        """Before someone else takes ``slot`` by hand, save its occupant when it was used.

        Raises ``ServiceError`` (and nothing changes) when that save fails.
        """
        record = self.book.record(slot)
        if not record.occupied or (record.chat, record.character) == (chat, character):
            return
        if record.usage >= 1 and record.chat and record.character and self.store is not None:
            try:
                await self._save_slot(
                    slot, chat=record.chat, character=record.character, autosave=True, track=False
                )
            except (ServiceError, LlamaError, OSError) as err:
                raise ServiceError(
                    f"Could not save {record.character} from slot {slot} first ({err}); "
                    "nothing was changed."
                ) from err

    async def _evict(self, record: SlotRecord) -> SaveOutcome | None:
        """Save an evicted character first when it was used at least once (the seed's rule)."""
        saved: SaveOutcome | None = None
        if record.usage >= 1 and record.chat and record.character and self.store is not None:
            try:
                saved = await self._save_slot(
                    record.slot,
                    chat=record.chat,
                    character=record.character,
                    autosave=True,
                    track=False,
                )
            except (ServiceError, LlamaError, OSError) as err:
                self.events.error(
                    Kind.EVICT, f"Could not save {record.character} before eviction: {err}"
                )
        self.events.info(
            Kind.EVICT,
            f"Evicted {record.character} from slot {record.slot} (usage {record.usage}).",
        )
        return saved

    def _allocate(self, chat: str, character: str, protected: Iterable[int]) -> Allocation:
        try:
            return self.book.allocate(chat, character, protected=set(protected))
        except SlotBookError as err:
            raise ServiceError(f"No slot for {character}: {err}") from err

    # -- slots -------------------------------------------------------------------------------

    def _check_slot(self, slot: int) -> None:
        total = self.props.total_slots if self.props else self.book.n_slots
        if not 0 <= slot < total:
            raise ServiceError(
                f"Slot {slot} does not exist: the server has slots 0 to {total - 1}."
            )

    async def assign(self, slot: int, chat: str, character: str) -> None:
        """Put a character in a slot by hand (its cache follows on its next generation)."""
        async with self._lock:
            await self._assign(slot, chat, character)

    async def _assign(self, slot: int, chat: str, character: str) -> None:
        await self._ensure_props()
        self._check_slot(slot)
        await self._save_before_replacing(slot, chat, character)
        other = self.book.find(chat, character)
        if other is not None and other != slot:
            self.book.release(other)
        self.book.assign(slot, chat, character)
        self.persist()
        self.events.info(Kind.ROUTE, f"Assigned {character} ({chat}) to slot {slot}.")

    async def erase(self, slot: int) -> int:
        """Erase a slot's cache on the server and forget who was in it. Files stay."""
        async with self._lock:
            return await self._erase(slot)

    async def _erase(self, slot: int) -> int:
        await self._ensure_props()
        self._check_slot(slot)
        result = await self.client.erase(slot)
        record = self.book.record(slot)
        self.book.release(slot)
        self.persist()
        who = f" ({record.character})" if record.character else ""
        self.events.info(Kind.ERASE, f"Erased slot {slot}{who}: {result.n_erased} tokens.")
        return result.n_erased

    async def clear_all(self) -> None:
        """Erase every slot (the seed's "clear all slots"; caches on disk stay)."""
        async with self._lock:
            await self._clear_all()

    async def _clear_all(self) -> None:
        props = await self._ensure_props()
        for slot in range(props.total_slots):
            await self.client.erase(slot)
        self.book.clear_all()
        self.persist()
        self.events.info(Kind.ERASE, f"Cleared all {props.total_slots} slots.")

    # -- automatic mode ----------------------------------------------------------------------

    async def route(
        self, chat: str, character: str, gen_type: GenType, *, protected: Iterable[int] = ()
    ) -> RouteDecision:
        """Make a slot ready for a character's generation and return it.

        Resident characters keep their slot. Otherwise the seed's allocation runs (free slot,
        else evict the least-used after saving it). On a new residency the character's latest
        save for this chat is restored first, once — never over a live cache, so swipes and
        continues only restore when nothing of the character is in memory.
        """
        async with self._lock:
            await self._ensure_props()
            slot = self.book.find(chat, character)
            resident = slot is not None
            evicted: SaveOutcome | None = None
            evicted_character: str | None = None
            if slot is None:
                allocation = self._allocate(chat, character, protected)
                slot = allocation.slot
                if allocation.evicted is not None and allocation.evicted.character:
                    evicted_character = allocation.evicted.character
                    evicted = await self._evict(allocation.evicted)
            restored: LoadOutcome | None = None
            record = self.book.record(slot)
            if not record.autoload_done:
                restored = await self._autoload(slot, chat, character)
            if gen_type is not GenType.IMPERSONATE:
                self.book.count_generation(slot, gen_type)
            self.persist()
            if not resident:
                self.events.info(Kind.ROUTE, f"{character} ({chat}) → slot {slot}.")
            return RouteDecision(
                slot=slot,
                chat=chat,
                character=character,
                resident=resident,
                restored=restored,
                evicted=evicted,
                evicted_character=evicted_character,
            )

    async def _autoload(self, slot: int, chat: str, character: str) -> LoadOutcome | None:
        self.book.mark_autoload_done(slot)
        if self.store is None:
            return None
        entry = self.store.latest(chat, character)
        if entry is None:
            return None
        try:
            result = await self.client.restore(slot, entry.filename)
        except LlamaError as err:
            self.events.error(
                Kind.AUTOLOAD, f"Could not restore {character} from {entry.filename}: {err}"
            )
            return None
        self.book.mark_loaded(slot, entry.filename, result.n_restored)
        self.book.mark_autoload_done(slot)
        self.events.info(
            Kind.AUTOLOAD,
            f"Restored {character} into slot {slot}: {result.n_restored} tokens, saved "
            f"{entry.timestamp.astimezone():%Y-%m-%d %H:%M:%S}.",
        )
        return LoadOutcome(
            slot=slot,
            chat=chat,
            character=character,
            filename=entry.filename,
            n_restored=result.n_restored,
            from_other_chat=False,
        )

    async def finish_generation(
        self,
        slot: int,
        *,
        counts_message: bool,
        tokens: int | None = None,
        chat: str | None = None,
        character: str | None = None,
    ) -> SaveOutcome | None:
        """Count a finished generation's message and autosave every N messages.

        With ``chat`` and ``character`` (who the generation was routed for), nothing is
        counted when someone else has taken the slot meanwhile (a load or a chat switch).
        """
        async with self._lock:
            if character is not None and self.book.find(chat or "", character) != slot:
                return None
            if tokens is not None:
                self.book.set_tokens(slot, tokens)
            if not counts_message:
                self.persist()
                return None
            self.book.count_message(slot)
            record = self.book.record(slot)
            due = (
                self.settings.autosave_enabled
                and self.store is not None
                and record.character is not None
                and self.book.messages_until_save(slot, self.settings.autosave_every) <= 0
            )
            if not due:
                self.persist()
                return None
            try:
                return await self._save_slot(slot, autosave=True)
            except (ServiceError, LlamaError, OSError) as err:
                self.events.error(Kind.AUTOSAVE, f"Autosave of slot {slot} failed: {err}")
                return None

    async def switch_chat(self, chat: str, characters: Sequence[str] = ()) -> list[SaveOutcome]:
        """The seed's chat switch: save used characters, clear all slots, place the new chat's.

        With ``clear_on_chat_switch`` off only the current chat changes.
        """
        async with self._lock:
            previous, self.current_chat = self.current_chat, chat
            if not self.settings.clear_on_chat_switch:
                return []
            saved: list[SaveOutcome] = []
            unsaved: set[int] = set()
            for record in self.book.snapshot():
                if record.character and record.chat and record.usage >= 1 and self.store:
                    try:
                        saved.append(await self._save_slot(record.slot, autosave=True))
                    except (ServiceError, LlamaError, OSError) as err:
                        self.events.error(
                            Kind.CHAT_SWITCH,
                            f"Could not save {record.character}: {err}. Its slot is kept, "
                            "not erased.",
                        )
                        unsaved.add(record.slot)
            props = await self._ensure_props()
            free: list[int] = []
            for slot in range(props.total_slots):
                if slot in unsaved:
                    continue  # never erase work that could not be saved
                try:
                    await self.client.erase(slot)
                except LlamaError as err:
                    self.events.error(Kind.CHAT_SWITCH, f"Could not erase slot {slot}: {err}")
                self.book.release(slot)
                free.append(slot)
            for slot, character in zip(free, characters, strict=False):
                self.book.assign(slot, chat, character)
            self.persist()
            placed = min(len(characters), len(free))
            self.events.info(
                Kind.CHAT_SWITCH,
                f"Chat switch {previous or '(none)'} → {chat}: saved {len(saved)}, "
                f"cleared {len(free)} slots, placed {placed}.",
            )
            return saved

    # -- settings (added for the dashboard's settings form) ----------------------------------

    async def apply_settings(self, settings: Settings) -> None:
        """Use ``settings`` from now on, without a restart.

        A new server URL, API key or save directory gets a new client and store (the server is
        read again on the next poll); a new state directory gets the book written there.
        """
        old, self.settings = self.settings, settings
        if (settings.server_url, settings.api_key, settings.save_dir) != (
            old.server_url,
            old.api_key,
            old.save_dir,
        ):
            old_client = self.client
            self.client = LlamaClient(
                settings.server_url, api_key=settings.api_key, save_dir=settings.save_dir
            )
            self.store = SaveStore(settings.save_dir) if settings.save_dir else None
            self.props = None
            self.state = ConnectionState.UNKNOWN
            self._last_task_ids.clear()
            await old_client.aclose()
        if settings.state_dir != old.state_dir:
            self.persist()


def _same(a: str, b: str) -> bool:
    return normalize(a) == normalize(b)
