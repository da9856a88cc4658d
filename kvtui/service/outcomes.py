"""What the service hands back: frozen snapshots for the dashboard and operation outcomes.

Plain data with no behaviour, shared by the service, the CLI, the proxy and the dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Generic, TypeVar

from kvtui.errors import KvtuiError

T = TypeVar("T")


class ServiceError(KvtuiError):
    """A request kvtui refuses or cannot complete; the message says what to do."""


class ConnectionState(StrEnum):
    UNKNOWN = "unknown"
    CONNECTED = "connected"
    LOADING = "loading model"
    UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class SlotRow:
    """One line of the slot table: the server's view merged with kvtui's book."""

    slot: int
    n_ctx: int
    processing: bool
    n_decoded: int | None
    n_remain: int | None
    tokens: int | None
    chat: str | None
    character: str | None
    usage: int
    messages_until_save: int | None
    last_save_at: datetime | None
    last_save_file: str | None


@dataclass(frozen=True)
class Snapshot:
    """Everything the dashboard shows, frozen at one poll."""

    state: ConnectionState
    server_url: str
    model: str | None
    build_info: str | None
    total_slots: int
    n_ctx: int | None
    save_dir: Path | None
    rows: tuple[SlotRow, ...]
    error: str | None
    taken_at: datetime


@dataclass(frozen=True)
class SaveOutcome:
    slot: int
    chat: str
    character: str
    filename: str
    n_saved: int
    n_written: int
    tag: str | None
    rotated: tuple[str, ...] = ()
    unchanged: bool = False
    """Nothing new was written: the slot still holds exactly what ``filename`` holds."""


@dataclass(frozen=True)
class LoadOutcome:
    slot: int
    chat: str
    character: str
    filename: str
    n_restored: int
    from_other_chat: bool
    evicted: str | None = None


@dataclass(frozen=True)
class RouteDecision:
    """Where a generation goes, and what kvtui did to make that slot ready."""

    slot: int
    chat: str
    character: str
    resident: bool
    restored: LoadOutcome | None
    evicted: SaveOutcome | None
    evicted_character: str | None


@dataclass(frozen=True)
class Failure:
    """One part of a batch that failed: what it was (a slot, a file) and the one-line reason."""

    item: str
    error: str


@dataclass(frozen=True)
class BatchResult(Generic[T]):
    """What a batch operation (save all, load several) did: what worked and what failed.

    Each part runs on its own; a failure is reported here (and in the event log) and the
    batch goes on with the next part.
    """

    done: tuple[T, ...] = ()
    failed: tuple[Failure, ...] = ()

    @property
    def total(self) -> int:
        return len(self.done) + len(self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class ChatContext:
    """What the proxy needs to identify a request: the current chat, its members, the user."""

    chat: str | None
    members: tuple[str, ...] = ()
    user_names: tuple[str, ...] = ()
