"""The event log: what kvtui did and what went wrong, for the dashboard, the CLI and the proxy.

Services append events; subscribers (the dashboard's log panel, a CLI printer) are called at once.
Only the most recent events are kept in memory.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


class Level(StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class Kind(StrEnum):
    SAVE = "save"
    AUTOSAVE = "autosave"
    LOAD = "load"
    AUTOLOAD = "autoload"
    ERASE = "erase"
    EVICT = "evict"
    ROTATE = "rotate"
    ROUTE = "route"
    CHAT_SWITCH = "chat-switch"
    CONNECTION = "connection"
    PREWARM = "prewarm"
    ERROR = "error"


@dataclass(frozen=True)
class Event:
    kind: Kind
    message: str
    level: Level = Level.INFO
    time: datetime = field(default_factory=lambda: datetime.now(UTC))


Subscriber = Callable[[Event], None]


class EventLog:
    """A bounded log of events with synchronous subscribers."""

    def __init__(self, limit: int = 500) -> None:
        self._events: deque[Event] = deque(maxlen=limit)
        self._subscribers: list[Subscriber] = []

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback`` for every new event; returns a function that unsubscribes."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def emit(self, kind: Kind, message: str, level: Level = Level.INFO) -> Event:
        event = Event(kind=kind, message=message, level=level)
        self._events.append(event)
        for callback in list(self._subscribers):
            callback(event)
        return event

    def info(self, kind: Kind, message: str) -> Event:
        return self.emit(kind, message, Level.INFO)

    def warning(self, kind: Kind, message: str) -> Event:
        return self.emit(kind, message, Level.WARNING)

    def error(self, kind: Kind, message: str) -> Event:
        return self.emit(kind, message, Level.ERROR)

    def recent(self, n: int | None = None) -> list[Event]:
        events = list(self._events)
        return events if n is None else events[-n:]
