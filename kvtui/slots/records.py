"""The slot book's vocabulary: generation types, one slot's record, an allocation, errors.

Frozen data shared by the book (:mod:`kvtui.slots.book`), the service and the proxy; the seed's
eviction rule ("save the evicted character first when it was used") is
:attr:`Allocation.save_first`, its only home.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from kvtui.errors import KvtuiError


class GenType(StrEnum):
    """SillyTavern's generation types (``Generate(type)``; ``normal`` when undefined)."""

    NORMAL = "normal"
    REGENERATE = "regenerate"
    SWIPE = "swipe"
    CONTINUE = "continue"
    QUIET = "quiet"
    IMPERSONATE = "impersonate"


CHAT_TURNS = frozenset({GenType.NORMAL, GenType.REGENERATE, GenType.SWIPE, GenType.CONTINUE})
"""The generation types that are a turn of the chat (not a quiet job or an impersonation)."""


class SlotBookError(KvtuiError):
    """A request the book cannot satisfy."""


class UnknownSlot(SlotBookError, IndexError):
    """A slot id outside ``0 <= slot < n_slots``."""


class AllSlotsProtected(SlotBookError):
    """Every slot is protected (or there are none): nothing may be evicted."""


@dataclass(frozen=True)
class SlotRecord:
    """One slot as kvtui knows it. Immutable: the book replaces records, callers keep copies."""

    slot: int
    chat: str | None = None
    character: str | None = None
    usage: int = 0
    messages_since_save: int = 0
    tokens: int | None = None
    last_save_at: datetime | None = None
    last_save_file: str | None = None
    loaded_from: str | None = None
    autoload_done: bool = False
    last_used: int = 0  # logical clock value of the last touch (eviction tie-break)

    @property
    def occupied(self) -> bool:
        return self.character is not None


@dataclass(frozen=True)
class Allocation:
    """Where a character goes. ``evicted`` is the record that was there (if it was taken over)."""

    slot: int
    resident: bool
    evicted: SlotRecord | None = None

    @classmethod
    def replacing(cls, record: SlotRecord) -> Allocation:
        """Someone takes ``record``'s slot by hand (an assign, a load into a chosen slot)."""
        return cls(slot=record.slot, resident=False, evicted=record if record.occupied else None)

    @property
    def save_first(self) -> bool:
        """The seed's rule: save the evicted character first when it was used at least once."""
        evicted = self.evicted
        return (
            evicted is not None
            and evicted.usage >= 1
            and evicted.chat is not None
            and evicted.character is not None
        )
