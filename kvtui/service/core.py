"""The state every part of the service shares, and the one place it is kept.

``ServiceCore`` holds the llama-server client, the save store, the slot book, the server's props,
the connection state, the current chat, the SillyTavern data directory and the prompt recorder,
plus the lock that serialises changes to the book and the slots. The service's rooms (monitor,
saves, loads, slot actions, automatic mode) each receive the one core; nobody outside the
``kvtui.service`` package touches it: the rest of kvtui talks to :class:`KvService`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Hashable
from pathlib import Path
from typing import Any

from kvtui.atomic import private_dir, write_atomic
from kvtui.events import EventLog, Kind
from kvtui.llama import LlamaClient
from kvtui.llama.checks import slot_problem, slot_sentence
from kvtui.llama.models import Props
from kvtui.service.outcomes import ConnectionState, ServiceError
from kvtui.service.prompts import PromptRecorder
from kvtui.service.writes import WriteBehind
from kvtui.settings import Settings
from kvtui.sillytavern import ChatIndex, SillyTavernData
from kvtui.slots import SlotBook
from kvtui.store import SaveStore
from kvtui.store.extension import known_chats_from
from kvtui.store.names import normalize


class ServiceCore:
    """The shared, mutable state of one ``KvService``; rooms change it under ``lock``."""

    def __init__(
        self, settings: Settings, *, client: LlamaClient | None, events: EventLog | None
    ) -> None:
        self.settings = settings
        self.events = events or EventLog()
        self.client = client or new_client(settings)
        self.store: SaveStore | None = SaveStore(settings.save_dir) if settings.save_dir else None
        self.book = self._own_book(SlotBook.load(settings.book_path))
        self.st_data: SillyTavernData | None = (
            SillyTavernData(settings.st_dir) if settings.st_dir else None
        )
        self.chat_index: ChatIndex | None = ChatIndex(settings.st_dir) if settings.st_dir else None
        """The latest messages of every SillyTavern chat: identity from evidence."""
        self.server_restarts = 0
        """Restarts of llama-server noticed (its caches were lost each time)."""
        self.slot_clears = 0
        """Chat switches that erased the slots."""
        self.opened_chat: str | None = None
        """The chat SillyTavern last said it opened (companion extension), if any."""
        self.recorder = PromptRecorder(settings.prompts_dir)
        if self.store is not None and self.st_data is not None:
            # Saves written by the KV Cache Manager extension name chats and members in a
            # collapsed ASCII form: map them back to SillyTavern's chats once, at start.
            try:
                self.store.set_known_chats(known_chats_from(self.st_data))
            except (OSError, ValueError) as err:
                self.events.warning(
                    Kind.SAVE, f"Could not read SillyTavern's chats to name old saves: {err}"
                )
        self.props: Props | None = None
        self.state = ConnectionState.UNKNOWN
        self.current_chat: str | None = None
        self.lock = asyncio.Lock()
        """Held while the book and the slots are changed; one operation at a time."""
        self.writes = WriteBehind(self._write_failed)
        """The book's and the recorded prompts' disk writes, off the event loop."""
        self._persisted: tuple[Path, int] | None = None
        self._recorded: dict[Hashable, tuple[PromptRecorder, str, dict[str, Any]]] = {}
        """The last prompt submitted per character, so an identical one is not written again."""
        self._queued: tuple[Path, int] | None = None

    def _own_book(self, book: SlotBook) -> SlotBook:
        """The book, or an empty one when it describes another server or a save directory that
        is gone (a deleted demo's): its rows would be ghosts. Said once in the event log."""
        settings = self.settings
        here = (
            settings.server_url.rstrip("/"),
            str(settings.save_dir) if settings.save_dir else None,
        )
        origin = book.origin
        stale = None
        if origin is not None and origin[0] != here[0]:
            stale = f"it describes another server ({origin[0]})"
        elif origin is not None and origin[1] is not None and not Path(origin[1]).is_dir():
            stale = f"its save directory {origin[1]} no longer exists"
        if stale is not None and any(r.occupied for r in book.snapshot()):
            self.events.warning(Kind.CONNECTION, f"Forgot the slot book's characters: {stale}.")
            book = SlotBook(book.n_slots)
        book.origin = here
        return book

    def persist(self) -> None:
        """Write the slot book atomically and fsynced (it survives a crash or a restart).

        Unchanged books are not written again (swipes and polls change nothing). The write
        runs behind the event loop (see :mod:`kvtui.service.writes`); :meth:`flush` waits.
        """
        target = self.settings.book_path
        seen = (target, self.book.revision)
        if seen == self._persisted or (seen == self._queued and self.writes.queued(BOOK)):
            return
        self._queued = seen

        def written() -> None:
            self._persisted = seen

        text = self.book.to_json()
        self.writes.submit(BOOK, functools.partial(_write_book, target, text), written)

    def record_prompt(
        self, chat: str, character: str, prompt: str, request: dict[str, Any]
    ) -> None:
        """Keep ``prompt`` as ``character``'s last in ``chat`` (written behind the loop)."""
        recorder = self.recorder
        key = ("prompt", chat, character)
        if self._recorded.get(key) == (recorder, prompt, request):
            return  # a swipe or regenerate sends the same request again: it is on disk already
        if len(self._recorded) > 1024:
            self._recorded.clear()
        self._recorded[key] = (recorder, prompt, request)
        write = functools.partial(recorder.record, chat, character, prompt, request)
        self.writes.submit(key, write)

    def last_recorded(self, chat: str, character: str) -> tuple[str, dict[str, Any]] | None:
        """The prompt (and request) last recorded for ``character`` in ``chat`` by this process,
        even while its write is still queued; ``None`` when only the disk may know."""
        held = self._recorded.get(("prompt", chat, character))
        if held is None or held[0] is not self.recorder:
            return None
        return held[1], held[2]

    def _write_failed(self, key: Hashable, error: OSError) -> None:
        self._recorded.pop(key, None)  # written again next time
        what = "the slot book" if key == BOOK else "a recorded prompt"
        self.events.error(Kind.ERROR, f"Could not write {what}: {error}")

    async def flush(self) -> None:
        """Wait until the slot book and prompts on disk are the ones in memory (or failed)."""
        self.persist()
        await self.writes.flush()

    def adopt_props(self, props: Props) -> None:
        """Size the book to the server's slots (dropping characters in slots that went away)."""
        if self.book.n_slots != props.total_slots:
            dropped = self.book.resize(props.total_slots)
            for record in dropped:
                if record.character:
                    self.events.warning(
                        Kind.CONNECTION,
                        f"Slot {record.slot} no longer exists; {record.character} was dropped.",
                    )
            self.persist()
        self.props = props

    async def ensure_props(self) -> Props:
        if self.props is None:
            self.adopt_props(await self.client.props())
        assert self.props is not None
        return self.props

    def require_store(self) -> SaveStore:
        if self.store is None:
            raise ServiceError(
                "No save directory is set. Give kvtui the server's --slot-save-path directory "
                "with --save-dir DIR (or save_dir in the config file)."
            )
        return self.store

    @property
    def total_slots(self) -> int:
        """The server's slot count as last seen (the book's size before the first look)."""
        if self.props is not None:
            return self.props.total_slots
        return self.client.total_slots or self.book.n_slots

    def slot_problem(self, slot: int) -> str | None:
        """Why ``slot`` is not a slot of this server (llama-server would wrap it), or None
        (the rule is :func:`kvtui.llama.checks.slot_problem`)."""
        return slot_problem(slot, self.total_slots)

    def check_slot(self, slot: int) -> None:
        problem = self.slot_problem(slot)
        if problem is not None:
            raise ServiceError(slot_sentence(problem))


BOOK = "book"


def _write_book(target: Path, text: str) -> None:
    private_dir(target.parent)
    write_atomic(target, text)


def new_client(settings: Settings) -> LlamaClient:
    return LlamaClient(settings.server_url, api_key=settings.api_key, save_dir=settings.save_dir)


def same_chat(a: str, b: str) -> bool:
    """Whether two chat ids name the same chat (as the store compares names)."""
    return normalize(a) == normalize(b)
