"""Warmth: why each turn re-prefilled, what it cost, and the policy that keeps caches warm.

The proxy's router calls a :class:`WarmthLedger` when it routes a generation
(:meth:`~WarmthLedger.begin`) and when the reply ends (:meth:`~WarmthLedger.finish`); the ledger
splits each turn's prefill into genuinely new and lost tokens with a reason, appends it to
``<state_dir>/turns.jsonl`` and keeps the dashboard's :class:`SlotWarmth` and
:class:`SessionSummary`. :func:`detect_ram_cache` tells whether llama-server keeps evicted
prompts in host memory; :mod:`kvtui.warmth.policy` decides restores and saves around it.
No ``textual`` here: this is the service layer.
"""

from __future__ import annotations

from kvtui.warmth.ledger import TurnTicket, WarmthLedger
from kvtui.warmth.log import TurnLog, turns_path
from kvtui.warmth.model import (
    UNATTRIBUTED,
    Reason,
    ReasonTotal,
    SessionSummary,
    SlotWarmth,
    TurnDecision,
    TurnRecord,
)
from kvtui.warmth.policy import (
    Choice,
    RamCacheModel,
    WarmthPolicy,
    should_restore_from_disk,
    should_save,
)
from kvtui.warmth.ramcache import RamCacheInfo, detect_ram_cache
from kvtui.warmth.summary import slot_warmth, summarize

__all__ = [
    "UNATTRIBUTED",
    "Choice",
    "RamCacheInfo",
    "RamCacheModel",
    "Reason",
    "ReasonTotal",
    "SessionSummary",
    "SlotWarmth",
    "TurnDecision",
    "TurnLog",
    "TurnRecord",
    "TurnTicket",
    "WarmthLedger",
    "WarmthPolicy",
    "detect_ram_cache",
    "should_restore_from_disk",
    "should_save",
    "slot_warmth",
    "summarize",
    "turns_path",
]
