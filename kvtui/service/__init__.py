"""The service layer: everything kvtui does to llama-server's slots and the save directory.

:class:`KvService` (in :mod:`kvtui.service.facade`) is the one way in for the dashboard, the CLI,
prewarm and the proxy. Its rooms are the package's modules: ``monitor`` (polls, restart
detection), ``saves``, ``loads``, ``slot_actions``, ``automatic`` (routing generations, the chat
switch), ``chats`` (following SillyTavern's active chat) and ``prompts`` (recorded prompts), all
sharing one ``core``. ``outcomes`` holds the frozen data they hand back.
"""

from __future__ import annotations

from kvtui.service.facade import KvService
from kvtui.service.outcomes import (
    BatchResult,
    ChatContext,
    ConnectionState,
    Failure,
    LoadOutcome,
    RouteDecision,
    SaveOutcome,
    ServiceError,
    SlotRow,
    Snapshot,
)
from kvtui.service.prompts import PromptRecorder, RecordedPrompt
from kvtui.service.saves import repair_save_dir

__all__ = [
    "BatchResult",
    "ChatContext",
    "ConnectionState",
    "Failure",
    "KvService",
    "LoadOutcome",
    "PromptRecorder",
    "RecordedPrompt",
    "RouteDecision",
    "SaveOutcome",
    "ServiceError",
    "SlotRow",
    "Snapshot",
    "repair_save_dir",
]
