"""Automatic mode's decisions: which slot a generation goes to, what happens after its reply,
and the seed's chat switch.

Resident characters keep their slot; a newcomer gets a free slot or evicts the least-used one
(saving it first); on a new residency the character's latest save for the chat is restored once.
After a reply the message is counted and every N messages the slot is autosaved. A
:class:`CachePolicy` (``KvService.use_cache_policy``; kvtui.warmth's RAM-aware one) may skip a
restore or a save the seed's rules would make.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from kvtui.events import Kind
from kvtui.service.core import ServiceCore
from kvtui.service.loads import Loads
from kvtui.service.outcomes import LoadOutcome, RouteDecision, SaveOutcome
from kvtui.service.saves import SAVE_FAILURES, Saves
from kvtui.slots import Allocation, GenType, SlotRecord


class CachePolicy(Protocol):
    """Consulted before automatic mode restores a save or takes one; ``None`` keeps the seed's
    rule. Each decision that differs from the seed's is said in the event log, with its why."""

    async def skip_restore(self, chat: str, character: str, save_tokens: int | None) -> str | None:
        """Before a character's latest save is restored into its new slot."""

    def save_choice(
        self, record: SlotRecord, *, evicting: bool, due: bool
    ) -> tuple[bool, str] | None:
        """Save ``record``'s slot now (before its eviction, or after a message; ``due``: the
        seed's rule says so)? ``None`` keeps the seed's rule; else the decision and why."""


class Automatic:
    """Routing and bookkeeping of generations for one service. Callers hold ``core.lock``."""

    def __init__(self, core: ServiceCore, saves: Saves, loads: Loads) -> None:
        self.core = core
        self.saves = saves
        self.loads = loads
        self.policy: CachePolicy | None = None

    async def route(
        self,
        chat: str,
        character: str,
        gen_type: GenType,
        *,
        protected: Iterable[int] = (),
        prompt: str | None = None,
    ) -> RouteDecision:
        """Make a slot ready for a character's generation and return it.

        Resident characters keep their slot. Otherwise the seed's allocation runs (free slot,
        else evict the least-used after saving it). On a new residency the character's latest
        save for this chat is restored first, once — never over a live cache, so swipes and
        continues only restore when nothing of the character is in memory.
        """
        core = self.core
        await core.ensure_props()
        slot = core.book.find(chat, character)
        resident = slot is not None
        evicted: SaveOutcome | None = None
        evicted_character: str | None = None
        if slot is None:
            allocation = self.loads.allocate(chat, character, protected)
            slot = allocation.slot
            evicted = await self._evict(allocation)
            if allocation.evicted is not None:
                evicted_character = allocation.evicted.character
        restored: LoadOutcome | None = None
        if not core.book.record(slot).autoload_done:
            restored = await self.loads.autoload(slot, chat, character, prompt, self.policy)
        if gen_type is not GenType.IMPERSONATE:
            core.book.count_generation(slot, gen_type)
        core.persist()
        if not resident:
            core.events.info(Kind.ROUTE, f"{character} ({chat}) → slot {slot}.")
        return RouteDecision(
            slot=slot,
            chat=chat,
            character=character,
            resident=resident,
            restored=restored,
            evicted=evicted,
            evicted_character=evicted_character,
        )

    async def _evict(self, allocation: Allocation) -> SaveOutcome | None:
        evicted = allocation.evicted
        if evicted is None or not evicted.character:
            return None
        choice = None
        if self.policy is not None and allocation.save_first:
            choice = self.policy.save_choice(evicted, evicting=True, due=True)
        if choice is not None and not choice[0]:
            why = choice[1]
            self.core.events.info(
                Kind.EVICT,
                f"Evicted {evicted.character} from slot {allocation.slot} (usage "
                f"{evicted.usage}) without a save: {why}.",
            )
            return None
        return await self.saves.farewell(allocation, required=False)

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
        core = self.core
        book, settings = core.book, core.settings
        if character is not None and book.find(chat or "", character) != slot:
            return None
        if tokens is not None:
            book.set_tokens(slot, tokens)
        if not counts_message:
            core.persist()
            return None
        book.count_message(slot)
        record = book.record(slot)
        due = (
            settings.autosave_enabled
            and core.store is not None
            and record.character is not None
            and book.messages_until_save(slot, settings.autosave_every) <= 0
        )
        choice = None
        if self.policy is not None and settings.autosave_enabled and core.store is not None:
            choice = self.policy.save_choice(record, evicting=False, due=due)
        if choice is not None and record.character is not None:
            if due and not choice[0]:
                core.events.info(Kind.AUTOSAVE, f"Autosave of slot {slot} skipped: {choice[1]}.")
            due = choice[0]
        if not due:
            core.persist()
            return None
        try:
            return await self.saves.save(slot, autosave=True)
        except SAVE_FAILURES as err:
            core.events.error(Kind.AUTOSAVE, f"Autosave of slot {slot} failed: {err}")
            return None

    async def switch_chat(self, chat: str, characters: Sequence[str] = ()) -> list[SaveOutcome]:
        """The seed's chat switch: save used characters, release all slots, place the new chat's.

        With ``clear_on_chat_switch`` off only the current chat changes. A character whose
        save fails keeps its slot (work that could not be saved is never erased).
        """
        core = self.core
        previous, core.current_chat = core.current_chat, chat
        if not core.settings.clear_on_chat_switch:
            return []
        saved: list[SaveOutcome] = []
        unsaved: set[int] = set()
        for record in core.book.snapshot():
            if not Allocation.replacing(record).save_first or core.store is None:
                continue
            try:
                saved.append(await self.saves.save(record.slot, autosave=True))
            except SAVE_FAILURES as err:
                core.events.error(
                    Kind.CHAT_SWITCH,
                    f"Could not save {record.character}: {err}. Its slot is kept, not erased.",
                )
                unsaved.add(record.slot)
        props = await core.ensure_props()
        core.slot_clears += 1
        # The slots are released, not erased: what they hold is saved (or was never used), and
        # the new chat's characters reuse the prefix it shares with their prompts (their cards)
        # instead of prefilling it again. A slot whose save failed keeps its character.
        free: list[int] = []
        for slot in range(props.total_slots):
            if slot in unsaved:
                continue
            core.book.release(slot)
            free.append(slot)
        held = core.book.last_held
        # Each character back in the slot it last held first (what that slot still holds of
        # its card is a prefix the server reuses for nothing), then the others in free slots:
        # an earlier member never takes a later member's own slot.
        waiting: list[str] = []
        for character in characters:
            own = [s for s in free if held.get(s) == character]
            if own:
                free.remove(own[0])
                core.book.assign(own[0], chat, character)
            else:
                waiting.append(character)
        for character, slot in zip(waiting, list(free), strict=False):
            free.remove(slot)
            core.book.assign(slot, chat, character)
        core.persist()
        placed = sum(1 for r in core.book.snapshot() if r.chat == chat)
        core.events.info(
            Kind.CHAT_SWITCH,
            f"Chat switch {previous or '(none)'} → {chat}: saved {len(saved)}, "
            f"released {props.total_slots - len(unsaved)} slots, placed {placed}.",
        )
        return saved
