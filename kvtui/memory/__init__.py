"""Scene memories: chat → prompt → KV-safe job on llama-server → validated memory → lorebook.

The service layer for memory books (it never imports textual): ``scene`` picks messages,
``prompt`` and ``library`` hold presets and build the prompt, ``jobs`` runs KV-safe jobs,
``contract`` validates replies, ``preview`` is the accept/edit/retry/cancel state,
``lorebook`` writes SillyTavern World Info, ``workflow`` ties them together, ``cli`` is
``kvtui memory``.
"""

from __future__ import annotations

from kvtui.memory.contract import Memory, MemoryReplyError, ReplyCode, memory_schema, parse_memory
from kvtui.memory.jobs import Borrowed, JobError, JobProgress, JobResult, JobRunner, PromptTooLarge
from kvtui.memory.lorebook import BookError, EntrySettings, Lorebook, StoredMemory
from kvtui.memory.preview import Preview, PreviewError, PreviewState
from kvtui.memory.settings import EntryMode, MemorySettings, OrderMode
from kvtui.memory.workflow import MemoryPlan, MemoryWorkflow, SavedMemory

__all__ = [
    "BookError",
    "Borrowed",
    "EntryMode",
    "EntrySettings",
    "JobError",
    "JobProgress",
    "JobResult",
    "JobRunner",
    "Lorebook",
    "Memory",
    "MemoryPlan",
    "MemoryReplyError",
    "MemorySettings",
    "MemoryWorkflow",
    "OrderMode",
    "Preview",
    "PreviewError",
    "PreviewState",
    "PromptTooLarge",
    "ReplyCode",
    "SavedMemory",
    "StoredMemory",
    "memory_schema",
    "parse_memory",
]
