"""The slot book: which character lives in which llama-server slot, and its counters.

Pure bookkeeping (no network): allocation as in the seed's "Алгоритм выделения слотов" (already
resident → free slot → evict the least-used, never a protected slot), usage counting per
generation type as in its "Счетчик использования", per-character message counters for autosave,
and atomic persistence so the book survives a restart of kvtui. The records, allocations and
errors it hands out are in :mod:`kvtui.slots.records` (``kvtui.slots`` exports them all).

Decisions the seed leaves open:

- Eviction ties (equal usage) go to the slot idle longest (a logical clock ticks on every
  assignment, counted generation and load), then to the lowest slot id.
- ``assign`` of the occupant already in the slot is a no-op; any other assignment starts a new
  residency (counters, tokens, last save and ``autoload_done`` start afresh). A character is never
  in two slots: assigning it elsewhere releases its old slot.
- ``mark_loaded`` also marks the residency's autoload as done (its cache came from a save) and
  resets the message counter (memory now equals that save).
- Names are matched exactly; callers pass the same canonical chat and character strings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeGuard

from kvtui.atomic import write_atomic
from kvtui.llama.checks import slot_problem, slot_sentence
from kvtui.slots.records import (
    Allocation,
    AllSlotsProtected,
    GenType,
    SlotRecord,
    UnknownSlot,
)

log = logging.getLogger(__name__)

BOOK_VERSION = 1


class SlotBook:
    """Slot → (chat, character, counters) for one llama-server."""

    def __init__(self, n_slots: int) -> None:
        if n_slots < 0:
            raise ValueError("n_slots must be >= 0")
        self._records = [SlotRecord(slot=i) for i in range(n_slots)]
        self._clock = 0
        self._revision = 0
        self.last_held: dict[int, str] = {}
        """Who each released slot held last (its cache is still on the server, not erased)."""
        self.origin: tuple[str, str | None] | None = None
        """The server URL and save directory this book describes (None in older books)."""

    # -- reading -------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """Grows with every change, so a writer can tell an unchanged book without reading it."""
        return self._revision

    @property
    def n_slots(self) -> int:
        return len(self._records)

    def record(self, slot: int) -> SlotRecord:
        self._check(slot)
        return self._records[slot]

    def snapshot(self) -> tuple[SlotRecord, ...]:
        """Every slot's record, frozen (later changes to the book do not show in it)."""
        return tuple(self._records)

    def find(self, chat: str, character: str) -> int | None:
        for record in self._records:
            if record.chat == chat and record.character == character:
                return record.slot
        return None

    def messages_until_save(self, slot: int, every: int) -> int:
        """Messages left before the next autosave (the seed's indicator); 0 means due now."""
        if every < 1:
            raise ValueError("every must be >= 1")
        return max(0, every - self.record(slot).messages_since_save)

    # -- allocation ----------------------------------------------------------------------

    def allocate(
        self, chat: str, character: str, protected: Iterable[int] = frozenset()
    ) -> Allocation:
        """Pick (and take) a slot: resident → free → least-used unprotected.

        The returned slot is already assigned to ``character``. A protected slot is neither
        evicted nor taken while free (it is reserved by the caller, e.g. during multi-load).
        """
        found = self.find(chat, character)
        if found is not None:
            return Allocation(slot=found, resident=True)
        guarded = set(protected)
        candidates = [r for r in self._records if r.slot not in guarded]
        free = [r for r in candidates if not r.occupied]
        if free:
            # The free slot this character last held first: what it still holds of the
            # character's card is a prefix the server reuses for nothing.
            free.sort(key=lambda r: (self.last_held.get(r.slot) != character, r.slot))
            self.assign(free[0].slot, chat, character)
            return Allocation(slot=free[0].slot, resident=False)
        if not candidates:
            raise AllSlotsProtected(
                f"No slot can take {character}: all {self.n_slots} slot(s) are protected."
            )
        victim = min(candidates, key=lambda r: (r.usage, r.last_used, r.slot))
        self.assign(victim.slot, chat, character)
        return Allocation(slot=victim.slot, resident=False, evicted=victim)

    def assign(self, slot: int, chat: str, character: str) -> None:
        """Put ``character`` of ``chat`` in ``slot`` (moving it if it lives elsewhere)."""
        self._check(slot)
        if not chat or not character:
            raise ValueError("chat and character must be non-empty")
        current = self._records[slot]
        if current.chat == chat and current.character == character:
            return
        other = self.find(chat, character)
        if other is not None:
            self.release(other)
        self._records[slot] = SlotRecord(
            slot=slot, chat=chat, character=character, last_used=self._tick()
        )
        self._revision += 1

    def put_back(self, record: SlotRecord) -> None:
        """Undo a takeover: ``record`` (as it was before) is in its slot again, counters and all.

        Used when the farewell save of an evicted character fails and the newcomer is refused;
        the record keeps its usage, so the next eviction saves it first again.
        """
        self._check(record.slot)
        if record.occupied and record.chat is not None and record.character is not None:
            other = self.find(record.chat, record.character)
            if other is not None and other != record.slot:
                self.release(other)
        self._records[record.slot] = record
        self._revision += 1

    def release(self, slot: int) -> None:
        self._check(slot)
        if self._records[slot].character is not None:
            self.last_held[slot] = self._records[slot].character or ""
        self._records[slot] = SlotRecord(slot=slot)
        self._revision += 1

    def clear_all(self) -> None:
        self._records = [SlotRecord(slot=i) for i in range(self.n_slots)]
        self._revision += 1

    def resize(self, n_slots: int) -> list[SlotRecord]:
        """Follow the server's slot count; returns the occupied records dropped beyond it."""
        if n_slots < 0:
            raise ValueError("n_slots must be >= 0")
        dropped = [r for r in self._records[n_slots:] if r.occupied]
        self._records = self._records[:n_slots] + [
            SlotRecord(slot=i) for i in range(len(self._records), n_slots)
        ]
        self._revision += 1
        return dropped

    # -- counters ------------------------------------------------------------------------

    def count_generation(self, slot: int, gen_type: GenType) -> None:
        """The seed's usage rule: ``normal`` always +1; regenerate, swipe, continue and quiet
        only while usage is 0; impersonate never. A free slot has nothing to count."""
        record = self.record(slot)
        if not record.occupied or gen_type is GenType.IMPERSONATE:
            return
        bump = gen_type is GenType.NORMAL or record.usage == 0
        self._update(slot, usage=record.usage + (1 if bump else 0), last_used=self._tick())

    def count_message(self, slot: int) -> None:
        """One more message by this slot's character since its last save."""
        record = self.record(slot)
        if record.occupied:
            self._update(slot, messages_since_save=record.messages_since_save + 1)

    def mark_saved(
        self, slot: int, filename: str, when: datetime, reset_counter: bool = True
    ) -> None:
        record = self.record(slot)
        self._update(
            slot,
            last_save_at=when,
            last_save_file=filename,
            messages_since_save=0 if reset_counter else record.messages_since_save,
        )

    def mark_loaded(self, slot: int, filename: str, tokens: int | None = None) -> None:
        """A save was restored into ``slot``: usage back to 0 (the seed's rule)."""
        self.record(slot)
        self._update(
            slot,
            usage=0,
            messages_since_save=0,
            loaded_from=filename,
            tokens=tokens,
            autoload_done=True,
            last_used=self._tick(),
        )

    def mark_autoload_done(self, slot: int) -> None:
        self.record(slot)
        self._update(slot, autoload_done=True)

    def set_tokens(self, slot: int, tokens: int | None) -> None:
        self.record(slot)
        self._update(slot, tokens=tokens)

    def mark_all_lost(self) -> list[str]:
        """The server lost every cache (it restarted): keep who sits where, but each resident
        must be restored again and has nothing unsaved worth saving. Returns their names."""
        return self.mark_lost(range(self.n_slots))

    def mark_lost(self, slots: Iterable[int]) -> list[str]:
        """Like :meth:`mark_all_lost`, for the given slots only."""
        names: list[str] = []
        for slot in slots:
            record = self._records[slot]
            if record.occupied:
                assert record.character is not None
                names.append(record.character)
                self._update(record.slot, usage=0, tokens=None, autoload_done=False)
        return names

    # -- persistence ---------------------------------------------------------------------

    def to_json(self) -> str:
        records = []
        for record in self._records:
            data = {name: getattr(record, name) for name in _RECORD_FIELDS}
            at = record.last_save_at
            data["last_save_at"] = at.isoformat() if at else None
            records.append(data)
        doc = {
            "version": BOOK_VERSION,
            "n_slots": self.n_slots,
            "clock": self._clock,
            "slots": records,
            "origin": list(self.origin) if self.origin is not None else None,
        }
        # Compact: json's fast C encoder is only used without indent (this runs per request).
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> SlotBook:
        """Parse :meth:`to_json` output; raises ``ValueError`` on anything malformed."""
        doc = json.loads(text)
        if not isinstance(doc, dict) or doc.get("version") != BOOK_VERSION:
            raise ValueError("not a slot book of a supported version")
        n_slots, clock, slots = doc.get("n_slots"), doc.get("clock", 0), doc.get("slots")
        if not _is_int(n_slots) or n_slots < 0 or not _is_int(clock) or not isinstance(slots, list):
            raise ValueError("malformed slot book")
        book = cls(n_slots)
        book._clock = clock
        origin = doc.get("origin")
        if isinstance(origin, list) and len(origin) == 2:
            book.origin = (str(origin[0]), str(origin[1]) if origin[1] is not None else None)
        for item in slots:
            record = _record_from_dict(item, n_slots)
            if record.occupied and record.chat is not None and record.character is not None:
                if book.find(record.chat, record.character) is not None:
                    continue  # a character in two slots: keep the first
            book._records[record.slot] = record
        return book

    def save_atomic(self, path: Path) -> None:
        """Write the book so a reader sees the old or the new file, never half of one."""
        write_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: Path, n_slots: int = 0) -> SlotBook:
        """The book at ``path``; an empty book of ``n_slots`` if it is missing or unreadable."""
        try:
            return cls.from_json(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(n_slots)
        except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeError are ValueErrors
            log.warning("Ignoring unreadable slot book %s: %s", path, err)
            return cls(n_slots)

    # -- internals -----------------------------------------------------------------------

    def _check(self, slot: int) -> None:
        problem = slot_problem(slot, self.n_slots)  # the book has as many slots as the server
        if problem is not None:
            raise UnknownSlot(slot_sentence(problem))

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _update(self, slot: int, **changes: Any) -> None:
        self._records[slot] = replace(self._records[slot], **changes)
        self._revision += 1


_RECORD_FIELDS = tuple(f.name for f in fields(SlotRecord))


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt(item: dict[str, Any], key: str, kind: type) -> Any:
    value = item.get(key)
    wrong_bool = isinstance(value, bool) != (kind is bool)  # bool is an int subclass
    if value is not None and (not isinstance(value, kind) or wrong_bool):
        raise ValueError(f"slot book field {key!r} has the wrong type")
    return value


def _record_from_dict(item: object, n_slots: int) -> SlotRecord:
    if not isinstance(item, dict):
        raise ValueError("slot entry is not an object")
    slot = item.get("slot")
    problem = slot_problem(slot, n_slots)
    if problem is not None or not _is_int(slot):
        raise ValueError(f"slot book entry: {problem}")
    chat, character = _opt(item, "chat", str), _opt(item, "character", str)
    if (chat is None) != (character is None) or chat == "" or character == "":
        raise ValueError(f"slot {slot} has a chat without a character (or the reverse)")
    saved_at = _opt(item, "last_save_at", str)
    when = datetime.fromisoformat(saved_at) if saved_at else None
    if when is not None and when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    counts = {k: _opt(item, k, int) or 0 for k in ("usage", "messages_since_save", "last_used")}
    if min(counts.values()) < 0:
        raise ValueError(f"slot {slot} has a negative counter")
    return SlotRecord(
        slot=slot,
        chat=chat,
        character=character,
        tokens=_opt(item, "tokens", int),
        last_save_at=when,
        last_save_file=_opt(item, "last_save_file", str),
        loaded_from=_opt(item, "loaded_from", str),
        autoload_done=bool(_opt(item, "autoload_done", bool)),
        **counts,
    )
