"""``KvService``: the service's one front door, for the dashboard, the CLI, prewarm and the proxy.

It performs every operation the seed describes — save, tagged save, restore, multi-load, erase,
clear, eviction with save-first, autosave with rotation, autoload, chat switch — by handing it to
the room that does it (:mod:`~kvtui.service.monitor`, :mod:`~kvtui.service.saves`,
:mod:`~kvtui.service.loads`, :mod:`~kvtui.service.slot_actions`,
:mod:`~kvtui.service.automatic`, :mod:`~kvtui.service.chats`) under the one lock, and reports each
to the event log. Callers get frozen snapshots and outcome objects back and never reach inside:
the client, store, book, SillyTavern data and prompt recorder are the service's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from kvtui.events import EventLog
from kvtui.llama import CompletionResult, LlamaClient
from kvtui.llama.models import Props, SlotState
from kvtui.service.automatic import Automatic, CachePolicy
from kvtui.service.borrow import borrowed_slot
from kvtui.service.chats import ChatFollower
from kvtui.service.core import BOOK, ServiceCore, new_client
from kvtui.service.loads import Loads
from kvtui.service.monitor import Monitor
from kvtui.service.outcomes import (
    BatchResult,
    ChatContext,
    ConnectionState,
    LoadOutcome,
    RouteDecision,
    SaveOutcome,
    Snapshot,
)
from kvtui.service.prompts import PromptRecorder, RecordedPrompt
from kvtui.service.saves import Saves, repair_save_dir
from kvtui.service.slot_actions import SlotActions
from kvtui.settings import Settings
from kvtui.sillytavern import ChatIndex, SillyTavernData
from kvtui.slots import GenType, SlotBook
from kvtui.store import SaveStore


class KvService:
    """kvtui's operations on one llama-server and one save directory."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: LlamaClient | None = None,
        events: EventLog | None = None,
    ) -> None:
        self._core = core = ServiceCore(settings, client=client, events=events)
        self.events = core.events
        self._monitor = Monitor(core)
        self._saves = Saves(core)
        self._loads = Loads(core, self._saves)
        self._slots = SlotActions(core, self._saves)
        self._automatic = Automatic(core, self._saves, self._loads)
        self._chats = self._follower()

    def _follower(self) -> ChatFollower | None:
        st_data = self._core.st_data
        return ChatFollower(self._core, st_data, self.switch_chat) if st_data else None

    # -- lifecycle ---------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Write the slot book (waiting for it) and close the llama-server client."""
        await self._core.flush()
        await self._core.client.aclose()

    async def flush(self) -> OSError | None:
        """Wait until the slot book and the recorded prompts are on disk (writes run behind
        the event loop); the error that kept the slot book off the disk, if it failed."""
        await self._core.flush()
        return self._core.writes.failed.get(BOOK)

    async def __aenter__(self) -> KvService:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def apply_settings(self, settings: Settings) -> None:
        """Use ``settings`` from now on, without a restart.

        A new server URL, API key or save directory gets a new client and store (the server is
        read again on the next poll); a new state directory gets the book written there; a new
        SillyTavern directory is followed from now on.
        """
        core = self._core
        async with core.lock:
            old, core.settings = core.settings, settings
            if settings.st_dir != old.st_dir:
                core.st_data = SillyTavernData(settings.st_dir) if settings.st_dir else None
                self._chats = self._follower()
            if settings.prompts_dir != old.prompts_dir:
                core.recorder = PromptRecorder(settings.prompts_dir)
            if (settings.server_url, settings.api_key, settings.save_dir) != (
                old.server_url,
                old.api_key,
                old.save_dir,
            ):
                old_client, core.client = core.client, new_client(settings)
                core.store = SaveStore(settings.save_dir) if settings.save_dir else None
                core.props = None
                core.state = ConnectionState.UNKNOWN
                self._monitor.forget_server()
                await old_client.aclose()
            if settings.state_dir != old.state_dir:
                await core.flush()

    # -- what callers may read ---------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The settings in force now (the settings form may replace them at any time)."""
        return self._core.settings

    @property
    def current_chat(self) -> str | None:
        """The chat kvtui is serving (the proxy routes into it; loads from others say so)."""
        return self._core.current_chat

    def set_current_chat(self, chat: str | None) -> None:
        """Serve ``chat`` from now on without a chat switch (slots keep what they hold)."""
        self._core.current_chat = chat

    @property
    def props(self) -> Props | None:
        return self._core.props

    @property
    def state(self) -> ConnectionState:
        return self._core.state

    @property
    def book(self) -> SlotBook:
        """The slot book, for reading (the service changes it; callers never do)."""
        return self._core.book

    @property
    def store(self) -> SaveStore | None:
        """The save store, for listing saves (``None`` without a save directory)."""
        return self._core.store

    @property
    def client(self) -> LlamaClient:
        """The llama-server client (diagnostics, benchmarks; operations are the service's)."""
        return self._core.client

    @property
    def st_data(self) -> SillyTavernData | None:
        """SillyTavern's data directory (``None`` when ``st_dir`` is not set)."""
        return self._core.st_data

    @property
    def recorder(self) -> PromptRecorder:
        """The last prompt each character was sent, as the proxy recorded it."""
        return self._core.recorder

    def require_store(self) -> SaveStore:
        return self._core.require_store()

    def resident_slot(self, chat: str, character: str) -> int | None:
        """The slot the book has ``character`` of ``chat`` in, if any."""
        return self._core.book.find(chat, character)

    # -- watching ----------------------------------------------------------------------------

    def repair_saves(self) -> list[str]:
        """After a crash: clean up the save directory once (see ``SaveStore.repair``), each
        thing done said in the event log. Only the process that keeps the slot book calls it:
        another's in-flight save would look like a leftover."""
        return repair_save_dir(self._core.store, self._core.events)

    async def connect(self) -> Props:
        """Read the server's props and size the book to its slots."""
        props = await self._core.client.props()
        self._core.adopt_props(props)
        return props

    async def refresh(self, *, max_age: float = 0.0) -> Snapshot:
        """Poll the server once and return what the dashboard shows. Never raises."""
        return await self._monitor.refresh(max_age=max_age)

    def snapshot(self) -> Snapshot:
        """What the dashboard shows, without asking the server."""
        return self._monitor.snapshot()

    async def slot_states(self) -> list[SlotState]:
        """``GET /slots`` as the server answers it now."""
        return await self._core.client.slots()

    async def watch_saves(self, stop_event: asyncio.Event) -> None:
        """Keep the save index current from file-system events until ``stop_event`` is set.

        While it runs, lookups (autoload's latest save, rotation, the picker) use the index
        instead of rescanning a directory that may hold tens of thousands of saves.
        """
        store = self._core.store
        if store is not None:
            await store.watch(lambda: None, stop_event)

    @property
    def follows_chats(self) -> bool:
        """Whether a SillyTavern directory is set, so :meth:`follow_chats` has work to do."""
        return self._chats is not None

    async def follow_chats(self, stop_event: asyncio.Event) -> None:
        """Follow SillyTavern's active chat (the seed's chat switch) until ``stop_event``."""
        if self._chats is not None:
            await self._chats.run(stop_event)

    @property
    def chat_index(self) -> ChatIndex | None:
        """SillyTavern's chats by their latest messages (None without a data directory)."""
        return self._core.chat_index

    @property
    def losses_seen(self) -> tuple[int, int]:
        """(server restarts, chat switches that cleared the slots) noticed so far."""
        return self._core.server_restarts, self._core.slot_clears

    @property
    def opened_chat(self) -> str | None:
        """The chat the companion extension last reported opened."""
        return self._core.opened_chat

    async def chat_opened(self, chat_id: str, *, reported: bool = True) -> None:
        """SillyTavern opened ``chat_id``: switch to it now (``reported``: the companion
        extension said so; else a sure identity of a request showed it).

        SillyTavern writes no file when a chat is opened, so this is the exact signal; with a
        data directory the switch places the chat's members as the watcher would."""
        if reported:
            self._core.opened_chat = chat_id
        follower = self._follower()
        if follower is not None:
            ref = await asyncio.to_thread(follower.st_data.find_chat, chat_id)
            if ref is not None:
                await follower.ensure(ref)
                return
        if self._core.current_chat != chat_id:
            await self.switch_chat(chat_id)

    async def chat_context(self) -> ChatContext:
        """The chat a generation arriving now belongs to (switching to it first), its
        members and the user's name. Never raises."""
        if self._chats is None:
            return ChatContext(self._core.current_chat)
        return await self._chats.context()

    # -- saves and loads ---------------------------------------------------------------------

    async def save_slot(
        self,
        slot: int,
        *,
        chat: str | None = None,
        character: str | None = None,
        tag: str | None = None,
        autosave: bool = False,
    ) -> SaveOutcome:
        """Save one slot to a new file named by the seed's scheme; rotate when untagged."""
        async with self._core.lock:
            return await self._saves.save(
                slot, chat=chat, character=character, tag=tag, autosave=autosave
            )

    async def save_all(self, tag: str | None = None) -> BatchResult[SaveOutcome]:
        """Save every slot that has a character (the seed's "save now" and "save with tag")."""
        return await self._saves.save_all(tag)

    async def load(
        self, filename: str, slot: int | None = None, *, protected: Iterable[int] = ()
    ) -> LoadOutcome:
        """Restore a save into ``slot``, or into the slot the seed's allocation picks."""
        async with self._core.lock:
            return await self._loads.load(filename, slot, protected=protected)

    async def load_many(self, filenames: Sequence[str]) -> BatchResult[LoadOutcome]:
        """Load several characters at once; none evicts another loaded in the same batch."""
        return await self._loads.load_many(filenames)

    # -- slots -------------------------------------------------------------------------------

    async def assign(self, slot: int, chat: str, character: str) -> None:
        """Put a character in a slot by hand (its cache follows on its next generation)."""
        async with self._core.lock:
            await self._slots.assign(slot, chat, character)

    async def erase(self, slot: int) -> int:
        """Erase a slot's cache on the server and forget who was in it. Files stay."""
        async with self._core.lock:
            return await self._slots.erase(slot)

    async def clear_all(self) -> None:
        """Erase every slot (the seed's "clear all slots"; caches on disk stay)."""
        async with self._core.lock:
            await self._slots.clear_all()

    async def client_slot_action(
        self, slot: int, action: str | None, filename: str | None
    ) -> str | None:
        """A client asks llama-server for ``action`` on ``slot``: why not (refused), or
        ``None`` when it may go ahead (after a restore or erase the book lets go of the slot
        first)."""
        refusal = self._slots.refusal(slot, action, filename)
        if refusal is None and action in ("restore", "erase"):
            async with self._core.lock:
                self._slots.release_for_client(slot, action)
        return refusal

    # -- automatic mode ----------------------------------------------------------------------

    async def route(
        self,
        chat: str,
        character: str,
        gen_type: GenType,
        *,
        protected: Iterable[int] = (),
        prompt: str | None = None,
    ) -> RouteDecision:
        """Make a slot ready for a character's generation and return it.

        ``prompt`` (the request's ``kvtui.fingerprint.canonical_text``) keeps autoload from
        restoring a save that holds another conversation."""
        async with self._core.lock:
            return await self._automatic.route(
                chat, character, gen_type, protected=protected, prompt=prompt
            )

    async def finish_generation(
        self,
        slot: int,
        *,
        counts_message: bool,
        tokens: int | None = None,
        chat: str | None = None,
        character: str | None = None,
    ) -> SaveOutcome | None:
        """Count a finished generation's message and autosave every N messages."""
        async with self._core.lock:
            return await self._automatic.finish_generation(
                slot, counts_message=counts_message, tokens=tokens, chat=chat, character=character
            )

    async def switch_chat(self, chat: str, characters: Sequence[str] = ()) -> list[SaveOutcome]:
        """The seed's chat switch: save used characters, release all slots, place the new chat's."""
        async with self._core.lock:
            return await self._automatic.switch_chat(chat, characters)

    def use_cache_policy(self, policy: CachePolicy | None) -> None:
        """A policy automatic mode asks before a restore or save (``None``: the seed's rules)."""
        self._automatic.policy = policy

    def borrowed_slot(self, preferred: int | None = None) -> AbstractAsyncContextManager[int]:
        """``async with service.borrowed_slot(slot) as slot:`` — a slot for one background job,
        its occupant parked before and restored after (see :mod:`kvtui.service.borrow`)."""
        return borrowed_slot(self._core, preferred)

    def job_gate(self) -> asyncio.Lock:
        """Held by a background job that borrows a slot: no routing, save or load meanwhile."""
        return self._core.lock

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """The server's token ids of ``text`` (``add_special``: with BOS, as a prompt)."""
        return await self._core.client.tokenize(text, add_special=add_special)

    async def render_chat(self, messages: list[Any]) -> str:
        """The prompt the server's chat template makes of ``messages``."""
        return await self._core.client.apply_template(messages)

    async def complete(self, prompt: str, *, slot: int, n_predict: int = 1) -> CompletionResult:
        """Process ``prompt`` into ``slot``'s cache (prewarm), generating ``n_predict`` tokens."""
        return await self._core.client.completion(
            prompt, n_predict=n_predict, id_slot=slot, cache_prompt=True
        )

    # -- recorded prompts --------------------------------------------------------------------

    def record_prompt(
        self, chat: str, character: str, prompt: str, request: dict[str, Any]
    ) -> None:
        """Keep ``prompt`` as the last one ``character`` was sent in ``chat``: written behind
        the event loop (a failure is in the event log), so a request never waits for the disk."""
        self._core.record_prompt(chat, character, prompt, request)

    async def recorded_prompt(self, chat: str, character: str) -> RecordedPrompt | None:
        """The last prompt recorded for ``character`` in ``chat`` (read off the loop)."""
        if self._core.writes.queued(("prompt", chat, character)):
            await self._core.writes.flush()
        return await asyncio.to_thread(self._core.recorder.last_request, chat, character)
