"""The llama-server client layer: async HTTP client, tolerant response models, typed errors."""

from __future__ import annotations

from kvtui.llama.checks import filename_problem
from kvtui.llama.client import LlamaClient
from kvtui.llama.errors import (
    AuthenticationFailed,
    InvalidFilename,
    LlamaError,
    ModelLoading,
    NoSlotAvailable,
    RestoreFailed,
    SaveFileMissing,
    ServerError,
    ServerUnreachable,
    SlotActionsDisabled,
    SlotOutOfRange,
    SlotsEndpointDisabled,
)
from kvtui.llama.models import (
    CompletionResult,
    EraseResult,
    Props,
    RestoreResult,
    SaveResult,
    SlotState,
    Timings,
)

__all__ = [
    "AuthenticationFailed",
    "CompletionResult",
    "EraseResult",
    "InvalidFilename",
    "LlamaClient",
    "LlamaError",
    "ModelLoading",
    "NoSlotAvailable",
    "Props",
    "RestoreFailed",
    "RestoreResult",
    "SaveFileMissing",
    "SaveResult",
    "ServerError",
    "ServerUnreachable",
    "SlotActionsDisabled",
    "SlotOutOfRange",
    "SlotState",
    "SlotsEndpointDisabled",
    "Timings",
    "filename_problem",
]
