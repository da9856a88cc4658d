"""Slot bookkeeping: which character is in which llama-server slot, counters, persistence."""

from __future__ import annotations

from kvtui.slots.book import BOOK_VERSION, SlotBook
from kvtui.slots.records import (
    CHAT_TURNS,
    Allocation,
    AllSlotsProtected,
    GenType,
    SlotBookError,
    SlotRecord,
    UnknownSlot,
)

__all__ = [
    "BOOK_VERSION",
    "CHAT_TURNS",
    "AllSlotsProtected",
    "Allocation",
    "GenType",
    "SlotBook",
    "SlotBookError",
    "SlotRecord",
    "UnknownSlot",
]
