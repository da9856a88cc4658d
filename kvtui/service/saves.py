"""Saving slots to files: one save, every slot's save, and the farewell save before an eviction.

A save is named by the seed's scheme, checked against what the server says it wrote (a save that
is empty, too small or not fully on disk is removed again: only the new file, never an older
save), described in a sidecar, tracked in the book and, when untagged, rotated. The farewell save
is the one implementation of the seed's rule "save a used character before replacing it"
(:attr:`kvtui.slots.Allocation.save_first`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kvtui.events import EventLog, Kind
from kvtui.fingerprint import PromptFingerprint, canonical_text
from kvtui.llama import LlamaError
from kvtui.service.core import ServiceCore
from kvtui.service.outcomes import BatchResult, Failure, SaveOutcome, ServiceError
from kvtui.slots import Allocation
from kvtui.store import SaveMeta, SaveStore
from kvtui.store.errors import StoreError

Mark = tuple[int | None, int | None]


@dataclass(frozen=True)
class _Held:
    """The save a slot held at its last save or load, and the server's mark of it then."""

    filename: str
    chat: str
    character: str
    mark: Mark


SAVE_FAILURES = (ServiceError, LlamaError, OSError)
"""What a save can fail with that is not a bug: refused, the server said no, the disk said no."""


class Saves:
    """The save operations of one service. Callers hold ``core.lock``."""

    def __init__(self, core: ServiceCore) -> None:
        self.core = core
        self._last: dict[int, _Held] = {}

    async def save(
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

        ``track=False`` (a farewell save) leaves the book alone: it already holds the newcomer.
        """
        core = self.core
        store = core.require_store()
        props = await core.ensure_props()
        core.check_slot(slot)
        record = core.book.record(slot)
        chat = chat or record.chat
        character = character or record.character
        if not chat or not character:
            raise ServiceError(
                f"Slot {slot} has no character assigned. Assign one first, or give "
                "--chat and --character."
            )
        mark = await self.slot_mark(slot)
        if tag is None:
            same = self._unchanged(slot, chat, character, mark)
            if same is not None:
                return same
        filename = store.new_filename(chat, character, tag=tag)
        now = datetime.now(UTC)
        meta = SaveMeta(
            chat=chat,
            character=character,
            tag=tag,
            model=props.model,
            build_info=props.build_info,
            n_ctx=props.n_ctx,
            slot=slot,
            saved_at=now,
            fingerprint=self._fingerprint(chat, character),
        )
        settings = core.settings
        try:
            entry = await store.save_verified(
                core.client,
                slot,
                filename,
                meta,
                min_tokens=max(1, settings.min_save_tokens),
                min_bytes=settings.min_save_bytes,
            )
        except StoreError as err:
            raise ServiceError(str(err)) from err
        n_saved = entry.n_tokens or 0
        n_written = entry.size
        self._last[slot] = _Held(entry.filename, chat, character, mark)
        if track:
            if record.chat != chat or record.character != character:
                core.book.assign(slot, chat, character)
            core.book.mark_saved(slot, filename, now)
            core.book.set_tokens(slot, n_saved)
        rotated: list[str] = []
        if tag is None:
            rotated = await asyncio.to_thread(
                store.rotate, chat, character, keep=settings.max_autosaves
            )
        core.persist()
        what = f"tag '{tag}'" if tag else ("autosave" if autosave else "save")
        core.events.info(
            Kind.AUTOSAVE if autosave else Kind.SAVE,
            f"Saved {character} ({chat}) from slot {slot}: {n_saved} tokens, {what}.",
        )
        if rotated:
            core.events.info(
                Kind.ROTATE, f"Rotated {len(rotated)} old autosave(s) of {character} ({chat})."
            )
        return SaveOutcome(
            slot=slot,
            chat=chat,
            character=character,
            filename=filename,
            n_saved=n_saved,
            n_written=n_written,
            tag=tag,
            rotated=tuple(rotated),
        )

    # -- what a slot holds -------------------------------------------------------------------

    async def slot_mark(self, slot: int) -> tuple[int | None, int | None]:
        """The server's (task id, tokens) of ``slot``: they change whenever its cache does."""
        try:
            states = await self.core.client.slots()
        except LlamaError:
            return (None, None)
        for state in states:
            if state.id == slot:
                return (state.id_task, state.n_prompt_tokens)
        return (None, None)

    def held(self, slot: int, filename: str, chat: str, character: str, mark: Mark) -> None:
        """``slot`` now holds exactly ``filename`` (it was just restored from it)."""
        self._last[slot] = _Held(filename, chat, character, mark)

    def _unchanged(self, slot: int, chat: str, character: str, mark: Mark) -> SaveOutcome | None:
        """The earlier save this slot still holds unchanged, as an outcome; else None.

        A chat switch seconds after an autosave, or "save now" twice, writes nothing new.
        """
        held = self._last.get(slot)
        if (
            held is None
            or None in mark
            or held.mark != mark
            or (held.chat, held.character) != (chat, character)
        ):
            return None
        store = self.core.store
        entry = store.get(held.filename) if store is not None else None
        if entry is None or entry.problem is not None:
            return None
        self.core.events.info(
            Kind.SAVE,
            f"{character} ({chat}) in slot {slot} is unchanged since {held.filename}; "
            "nothing new written.",
        )
        return SaveOutcome(
            slot=slot,
            chat=chat,
            character=character,
            filename=held.filename,
            n_saved=entry.n_tokens or 0,
            n_written=entry.size,
            tag=entry.tag,
            unchanged=True,
        )

    def _fingerprint(self, chat: str, character: str) -> dict[str, Any] | None:
        """The fingerprint of the prompt last routed for this character (what its slot holds
        the start of), for the sidecar; None when kvtui never saw one."""
        held = self.core.last_recorded(chat, character)  # its disk write may still be queued
        if held is not None:
            prompt, request = held
        else:
            try:
                recorded = self.core.recorder.last_request(chat, character)
            except OSError:
                return None
            if recorded is None:
                return None
            prompt, request = recorded.prompt, recorded.body
        # The recorder keeps a text prompt beside its body (Chat Completion bodies keep theirs).
        body = {**{k: v for k, v in request.items() if k != "prompt"}, "prompt": prompt}
        return PromptFingerprint.of(canonical_text(body)).to_json()

    async def farewell(self, allocation: Allocation, *, required: bool) -> SaveOutcome | None:
        """Before a used character loses its slot, save it (the seed's rule, its one home).

        Nothing is saved when the rule does not ask for it, or without a save directory (there
        are no saves at all then). When the save fails:

        - ``required=True`` (a load or an assign by hand) raises ``ServiceError``: the caller
          changes nothing, so nothing is lost and the user can retry;
        - ``required=False`` (routing a generation) logs the failure and the eviction goes on:
          the request is served either way, and refusing the slot would send it unpinned, so
          llama-server would overwrite a slot of its own choosing with the book none the wiser.
        """
        core = self.core
        evicted = allocation.evicted
        saved: SaveOutcome | None = None
        if allocation.save_first and core.store is not None and evicted is not None:
            try:
                saved = await self.save(
                    allocation.slot,
                    chat=evicted.chat,
                    character=evicted.character,
                    autosave=True,
                    track=False,
                )
            except SAVE_FAILURES as err:
                if required:
                    raise ServiceError(
                        f"Could not save {evicted.character} from slot {allocation.slot} first "
                        f"({err}); nothing was changed."
                    ) from err
                core.events.error(
                    Kind.EVICT, f"Could not save {evicted.character} before eviction: {err}"
                )
        if evicted is not None:
            core.events.info(
                Kind.EVICT,
                f"Evicted {evicted.character} from slot {allocation.slot} (usage {evicted.usage}).",
            )
        return saved

    async def save_all(self, tag: str | None = None) -> BatchResult[SaveOutcome]:
        """Save every slot that has a character (the seed's "save now" and "save with tag").

        Each slot is saved under the lock on its own, so the proxy's routing can run between.
        """
        core = self.core
        done: list[SaveOutcome] = []
        failed: list[Failure] = []
        for record in core.book.snapshot():
            if not record.character:
                continue
            try:
                async with core.lock:
                    done.append(await self.save(record.slot, tag=tag))
            except (ServiceError, LlamaError) as err:
                core.events.error(Kind.SAVE, f"Slot {record.slot}: {err}")
                failed.append(Failure(f"slot {record.slot}", str(err)))
        return BatchResult(tuple(done), tuple(failed))


def repair_save_dir(store: SaveStore | None, events: EventLog | None = None) -> list[str]:
    """``store.repair()`` with its notes logged as warnings (and returned); never raises."""
    if store is None:
        return []
    try:
        notes = store.repair()
    except (StoreError, OSError) as err:
        notes = [f"Could not check the save directory for leftovers: {err}"]
    if events is not None:
        for note in notes:
            events.warning(Kind.SAVE, note)
    return notes
