"""Restoring saves into slots: a load by hand, several at once, and automatic mode's autoload.

A load by hand goes into the chosen slot or the one the seed's allocation picks, saving the
character it replaces first (and refusing when that save fails). Autoload restores a character's
latest save for its chat the first time it takes a slot, never over a live cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from kvtui.events import Kind
from kvtui.llama import LlamaError, RestoreFailed
from kvtui.service.core import ServiceCore, same_chat
from kvtui.service.outcomes import BatchResult, Failure, LoadOutcome, ServiceError
from kvtui.service.saves import Saves
from kvtui.slots import Allocation, SlotBookError
from kvtui.store import SaveEntry
from kvtui.store.errors import StoreError

if TYPE_CHECKING:
    from kvtui.service.automatic import CachePolicy


class Loads:
    """The load operations of one service. Callers hold ``core.lock`` (``load_many`` takes it)."""

    def __init__(self, core: ServiceCore, saves: Saves) -> None:
        self.core = core
        self.saves = saves

    def entry(self, filename: str) -> SaveEntry:
        store = self.core.require_store()
        store.path_for(filename)  # refuses names that escape the directory
        entry = store.get(filename)
        if entry is None:
            raise ServiceError(f"No save file named {filename!r} in {store.directory}.")
        return entry

    def allocate(self, chat: str, character: str, protected: Iterable[int]) -> Allocation:
        """Take a slot by the seed's allocation (the book already names the newcomer)."""
        try:
            return self.core.book.allocate(chat, character, protected=set(protected))
        except SlotBookError as err:
            raise ServiceError(f"No slot for {character}: {err}") from err

    async def load(
        self, filename: str, slot: int | None = None, *, protected: Iterable[int] = ()
    ) -> LoadOutcome:
        """Restore a save into ``slot``, or into the slot the seed's allocation picks."""
        core = self.core
        entry = self.entry(filename)
        props = await core.ensure_props()
        entry = self.restorable(entry, props.n_ctx)
        # Scenario 4.5: a save of another chat loaded while a chat is open serves that chat.
        current = core.current_chat
        chat = current if current is not None else entry.chat
        if slot is None:
            allocation = self.allocate(chat, entry.character, protected)
            try:
                await self.saves.farewell(allocation, required=True)
            except ServiceError:
                if allocation.evicted is not None:
                    core.book.put_back(allocation.evicted)
                    core.persist()
                raise
        else:
            core.check_slot(slot)
            record = core.book.record(slot)
            if (record.chat, record.character) == (chat, entry.character):
                allocation = Allocation(slot=slot, resident=True)
            else:
                allocation = Allocation.replacing(record)
                await self.saves.farewell(allocation, required=True)
        slot = allocation.slot
        evicted = allocation.evicted
        try:
            result = await core.client.restore(slot, entry.filename)
        except RestoreFailed:
            # The server cleared the slot when the restore failed: nobody is in it any more.
            core.book.release(slot)
            core.persist()
            raise
        core.book.assign(slot, chat, entry.character)
        core.book.mark_loaded(slot, entry.filename, result.n_restored)
        core.persist()
        self.saves.held(
            slot, entry.filename, chat, entry.character, await self.saves.slot_mark(slot)
        )
        other = current is not None and not same_chat(entry.chat, current)
        note = f" (from chat {entry.chat}, for the open chat {current})" if other else ""
        core.events.info(
            Kind.LOAD,
            f"Loaded {entry.character} into slot {slot}: {result.n_restored} tokens from "
            f"{entry.timestamp.astimezone():%Y-%m-%d %H:%M:%S}{note}.",
        )
        return LoadOutcome(
            slot=slot,
            chat=chat,
            character=entry.character,
            filename=entry.filename,
            n_restored=result.n_restored,
            from_other_chat=other,
            evicted=evicted.character if evicted is not None else None,
        )

    async def load_many(self, filenames: Sequence[str]) -> BatchResult[LoadOutcome]:
        """Load several characters at once; none evicts another loaded in the same batch."""
        protected: set[int] = set()
        done: list[LoadOutcome] = []
        failed: list[Failure] = []
        for filename in filenames:
            try:
                async with self.core.lock:
                    outcome = await self.load(filename, protected=protected)
            except (ServiceError, LlamaError) as err:
                self.core.events.error(Kind.LOAD, f"{filename}: {err}")
                failed.append(Failure(filename, str(err)))
                continue
            protected.add(outcome.slot)
            done.append(outcome)
        return BatchResult(tuple(done), tuple(failed))

    def restorable(self, entry: SaveEntry, n_ctx: int | None) -> SaveEntry:
        """``entry`` checked without the server (size, header, context), or ``ServiceError``:
        a file that fails is never sent, so the target slot keeps its cache."""
        try:
            return self.core.require_store().check_restorable(entry, n_ctx or None)
        except StoreError as err:
            raise ServiceError(str(err)) from err

    async def autoload(
        self,
        slot: int,
        chat: str,
        character: str,
        prompt: str | None = None,
        policy: CachePolicy | None = None,
    ) -> LoadOutcome | None:
        """A character's first generation in a slot: restore its best save for ``chat``.

        ``prompt`` is the request's canonical text (``kvtui.fingerprint.canonical_text``): with
        it a save that holds another conversation is never restored for this one. ``policy``
        may leave the character to llama-server's memory instead (no disk read).
        """
        core = self.core
        core.book.mark_autoload_done(slot)
        if core.store is None:
            return None
        n_ctx = core.props.n_ctx if core.props is not None else None
        entry, notes = core.store.pick_restorable(chat, character, n_ctx, prompt_text=prompt)
        for note in notes:
            core.events.warning(Kind.AUTOLOAD, f"Not restoring {character}: {note}")
        if entry is None:
            return None
        why = await policy.skip_restore(chat, character, entry.n_saved) if policy else None
        if why is not None:
            core.events.info(Kind.AUTOLOAD, f"Not restoring {character} from disk: {why}.")
            return None
        try:
            entry = self.restorable(entry, n_ctx)
            result = await core.client.restore(slot, entry.filename)
        except (LlamaError, ServiceError) as err:
            core.events.error(
                Kind.AUTOLOAD, f"Could not restore {character} from {entry.filename}: {err}"
            )
            return None
        core.book.mark_loaded(slot, entry.filename, result.n_restored)
        core.book.mark_autoload_done(slot)
        self.saves.held(slot, entry.filename, chat, character, await self.saves.slot_mark(slot))
        core.events.info(
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
