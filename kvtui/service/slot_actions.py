"""Changing slots by hand: assign a character, erase a slot, clear them all, and police the
slot actions a client sends through the proxy.

An assign saves the character it replaces first (the seed's rule; it is refused when that save
fails). llama-server wraps out-of-range slot ids (overwriting files) and wipes a slot whose
restore fails, so a client's own actions are checked here before the proxy forwards them, and
after a client's restore or erase the book no longer claims to know who is in that slot.
"""

from __future__ import annotations

import os

from kvtui.events import Kind
from kvtui.service.core import ServiceCore
from kvtui.service.saves import Saves
from kvtui.slots import Allocation
from kvtui.store import StoreError
from kvtui.store.names import PRIVATE_PREFIX, InvalidSaveName, check_filename, is_private_name


class SlotActions:
    """Slot operations of one service. Callers hold ``core.lock`` (except where noted)."""

    def __init__(self, core: ServiceCore, saves: Saves) -> None:
        self.core = core
        self.saves = saves

    async def assign(self, slot: int, chat: str, character: str) -> None:
        """Put a character in a slot by hand (its cache follows on its next generation)."""
        core = self.core
        await core.ensure_props()
        core.check_slot(slot)
        record = core.book.record(slot)
        if (record.chat, record.character) != (chat, character):
            await self.saves.farewell(Allocation.replacing(record), required=True)
        other = core.book.find(chat, character)
        if other is not None and other != slot:
            core.book.release(other)
        core.book.assign(slot, chat, character)
        core.persist()
        core.events.info(Kind.ROUTE, f"Assigned {character} ({chat}) to slot {slot}.")

    async def erase(self, slot: int) -> int:
        """Erase a slot's cache on the server and forget who was in it. Files stay."""
        core = self.core
        await core.ensure_props()
        core.check_slot(slot)
        result = await core.client.erase(slot)
        record = core.book.record(slot)
        core.book.release(slot)
        core.persist()
        who = f" ({record.character})" if record.character else ""
        core.events.info(Kind.ERASE, f"Erased slot {slot}{who}: {result.n_erased} tokens.")
        return result.n_erased

    async def clear_all(self) -> None:
        """Erase every slot (the seed's "clear all slots"; caches on disk stay)."""
        core = self.core
        props = await core.ensure_props()
        for slot in range(props.total_slots):
            await core.client.erase(slot)
        core.book.clear_all()
        core.persist()
        core.events.info(Kind.ERASE, f"Cleared all {props.total_slots} slots.")

    def refusal(self, slot: int, action: str | None, filename: str | None) -> str | None:
        """Why a client's ``action`` on ``slot`` must not reach llama-server, or ``None``."""
        core = self.core
        problem = core.slot_problem(slot)
        if problem is not None:
            return problem
        if action not in ("save", "restore"):
            return None
        if filename is None:
            return 'the body needs a "filename": a plain file name in the save directory'
        try:
            check_filename(filename)
        except InvalidSaveName as err:
            return f"{err} Give a plain file name inside the save directory"
        if is_private_name(filename):
            return f"names starting with {PRIVATE_PREFIX!r} are kvtui's own files"
        store = core.store
        if store is None:
            return None
        taken = os.path.lexists(store.directory / filename)
        if action == "save" and taken:
            return (
                f"a file named {filename!r} already exists in the save directory, and a save "
                "never overwrites one; save under a new name"
            )
        if action == "restore" and not store.exists(filename):
            return f"no save file named {filename!r} (a failed restore wipes the slot)"
        if action == "restore":  # checked as kvtui's own loads are: the slot keeps its cache
            try:
                store.check_restorable(filename, core.props.n_ctx if core.props else None)
            except StoreError as err:
                return str(err).rstrip(".")
        return None

    def release_for_client(self, slot: int, action: str) -> None:
        """A client is about to run ``action`` on ``slot`` itself: the book lets go of it.

        Done before forwarding: once the client sees the answer, the book must already agree.
        """
        core = self.core
        record = core.book.record(slot)
        if record.occupied:
            core.book.release(slot)
            core.persist()
            core.events.warning(
                Kind.ROUTE,
                f"A client ran {action} on slot {slot} directly; {record.character} is "
                "no longer counted as in it.",
            )
