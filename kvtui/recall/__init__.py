"""Memory recall injected where the user puts a macro, without busting the cached prompt.

The proxy builds one engine (:func:`kvtui.recall.hook.build_engine`) and calls
:func:`kvtui.recall.hook.inject` (:meth:`RecallEngine.apply` in a worker thread) for each
generation request: it finds the
``{{kvtui_memories}}`` (per-turn recall) and ``{{kvtui_longterm}}`` (stable long-term block)
macros, chooses the chat's kvtui memories World-Info style (:mod:`kvtui.recall.select`), keeps
the recall per (chat, character) right across swipe, regenerate, edit and delete
(:mod:`kvtui.recall.engine`), optionally keeps each turn's recall where the model read it
(:mod:`kvtui.recall.pins`), and returns the body to forward with telemetry
(:mod:`kvtui.recall.telemetry`: what the proxy books per turn). Service layer: no textual here.
"""

from __future__ import annotations

from kvtui.recall.books import memory_books
from kvtui.recall.engine import RecallEngine
from kvtui.recall.memories import LorebookSource, Memory, MemorySource, StaticSource
from kvtui.recall.outcome import Decision, RecallOutcome, RecallTelemetry
from kvtui.recall.settings import RecallSettings, SwipePolicy

__all__ = [
    "Decision",
    "LorebookSource",
    "Memory",
    "MemorySource",
    "RecallEngine",
    "RecallOutcome",
    "RecallSettings",
    "RecallTelemetry",
    "StaticSource",
    "SwipePolicy",
    "memory_books",
]
