"""Routing generations: who is speaking, what kind of turn it is, which slot it goes to, and
the bookkeeping once the reply is complete.

kvtui identifies the chat and character, classifies the generation against the character's
previous request, has the service make a slot ready (restoring the character's latest save when
it is not resident), pins the request to that slot with ``id_slot`` and, once the reply is
complete, has the service count the message and autosave every N. Routing never blocks a
request: if kvtui's own part fails, the request still goes through (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from kvtui.events import Kind
from kvtui.fingerprint import canonical_text
from kvtui.memory.settings import MemorySettings
from kvtui.proxy.chatidentity import identify_request
from kvtui.proxy.extras import RouterExtras
from kvtui.proxy.gentype import (
    Classification,
    TurnMemory,
    classify_generation,
    classify_request,
    remember,
    request_prompt,
    request_stop,
)
from kvtui.proxy.identity import Identity, IdentitySource, infer_identity
from kvtui.proxy.jobshape import JobKind, background_job
from kvtui.proxy.observer import ReplyObserver
from kvtui.proxy.relay import RelayOutcome
from kvtui.service import KvService, RouteDecision, SaveOutcome
from kvtui.sillytavern.templates import ControlPrompts
from kvtui.slots import CHAT_TURNS, GenType
from kvtui.warmth import TurnTicket

POLL_MAX_AGE = 0.25
"""Seconds a ``/slots`` poll is reused for routing without other evidence of the same server."""


@dataclass
class Routed:
    """A generation request after routing, kept until its reply is complete."""

    identity: Identity
    gen_type: GenType
    counts_message: bool
    slot: int | None
    prompt: str | None
    previous: TurnMemory | None
    classification: Classification | None  # None for token-id prompts
    ticket: TurnTicket | None = None
    lease: contextlib.AsyncExitStack | None = None
    """A background job's lent slot, given back once its reply is through."""


@dataclass(frozen=True)
class Identified:
    """A request's identity and classification, with what the classifier used."""

    identity: Identity
    forwarded: dict[str, Any]
    previous: TurnMemory | None
    classification: Classification | None
    user: str | None
    prompts: ControlPrompts | None


Forward = Callable[[ReplyObserver], Awaitable[RelayOutcome]]


class GenerationRouter:
    """Routes generation requests for one service and books their replies."""

    def __init__(self, service: KvService, extras: RouterExtras) -> None:
        self.service = service
        self.extras = extras
        self._turns: dict[tuple[str, str], TurnMemory | None] = {}
        self._settling: set[asyncio.Future[None]] = set()
        self.poll_max_age: Callable[[], float] = lambda: POLL_MAX_AGE
        """How old a ``/slots`` poll may be and still stand for "the server did not restart"
        (the proxy lengthens it while a kept-alive connection shows the server is the same)."""

    async def settled(self) -> None:
        """Wait until the bookkeeping of every reply the client has seen end is done.

        The client gets the end of a reply before kvtui counts it and autosaves (a save of a
        big cache takes seconds; the user should not wait for it). The next routing waits for
        that, so a group's next speaker never evicts a slot whose reply is still being booked.
        """
        while self._settling:
            await asyncio.wait(set(self._settling))

    async def serve(self, routed: Routed | None, forward: Forward) -> None:
        """Relay the routed request with ``forward``, then book its reply."""
        settling: list[asyncio.Future[None]] = []

        def begin_settling() -> None:
            if not settling:
                settling.append(asyncio.get_running_loop().create_future())
                self._settling.add(settling[0])

        observer = ReplyObserver(streaming=False, on_end=begin_settling)
        try:
            try:
                outcome = await forward(observer)
            finally:
                if routed is not None and routed.lease is not None:
                    await routed.lease.aclose()
            begin_settling()
            if routed is not None and routed.lease is None:
                await self._finish(routed, observer, outcome)
        finally:
            for future in settling:
                future.set_result(None)
                self._settling.discard(future)

    async def _recall(self, chat: str, character: str) -> TurnMemory | None:
        """The character's last turn: in memory, else rebuilt from the recorded prompt (so a
        swipe right after a kvtui restart is still recognised as one)."""
        key = (chat, character)
        if key in self._turns:
            return self._turns[key]
        memory: TurnMemory | None = None
        recorded = await self.service.recorded_prompt(chat, character)
        if recorded is not None:
            result = classify_generation(
                recorded.prompt, stop=request_stop(recorded.body), character=character
            )
            memory = remember(None, result, recorded.prompt, "")
        self._turns[key] = memory
        return memory

    async def _identify(self, headers: dict[str, str], data: dict[str, Any]) -> Identified | None:
        """Who is speaking and what kind of turn it is; None (logged) when that fails.

        With a SillyTavern data directory the chat comes from evidence (the prompt's latest
        messages matched against the chats, SillyTavern's state, the extension's open event);
        without one, from the request's own clues and the current chat.
        """
        service = self.service
        try:
            index = service.chat_index
            if index is not None:
                identity, forwarded = await identify_request(
                    index, data, headers, opened=service.opened_chat
                )
                user = index.state.user_name
                prompts: ControlPrompts | None = index.state.prompts
            else:
                identity, forwarded = infer_identity(
                    data, headers, members=[], current_chat=service.current_chat, user_names=[]
                )
                user, prompts = None, None
            previous = await self._recall(identity.chat, identity.character)
            result = classify_request(
                forwarded,
                previous,
                character=identity.character,
                user_name=user or None,
                declared=identity.declared_type,
                chat=identity.evidence,
                prompts=prompts,
            )
        except Exception as err:  # noqa: BLE001 - a request is never blocked by kvtui's part
            service.events.error(Kind.ROUTE, f"Could not identify a request: {err!r}")
            return None
        return Identified(identity, forwarded, previous, result, user or None, prompts)

    async def route(
        self, headers: dict[str, str], data: dict[str, Any]
    ) -> tuple[Routed | None, dict[str, Any]]:
        """Identify, classify and route a generation; returns what to forward. Never raises."""
        service = self.service
        await self.settled()
        # The poll (a restarted server is noticed before routing) overlaps the identification.
        poll = asyncio.ensure_future(self._refresh())
        try:
            identified = await self._identify(headers, data)
        finally:
            await poll
        if identified is None:
            return None, {k: v for k, v in data.items() if k != "kvtui"}
        identity, forwarded, previous, result = (
            identified.identity,
            identified.forwarded,
            identified.previous,
            identified.classification,
        )
        gen_type = result.gen_type if result is not None else GenType.NORMAL
        from_chats = identity.source in (IdentitySource.EVIDENCE, IdentitySource.INFERRED)
        job = background_job(
            forwarded, gen_type, sillytavern=from_chats, declared=identity.declared_type
        )
        if job is not None:
            return await self._route_job(job, identified, gen_type)
        # An unsure chat is never counted or autosaved: a save must not lie about its chat.
        counts = (result.counts_message if result is not None else True) and identity.sure
        if identity.sure and service.current_chat != identity.chat:
            await service.chat_opened(identity.chat, reported=False)
        canonical = canonical_text(forwarded)
        prompt = request_prompt(forwarded, identified.prompts)
        previous_prompt = previous.prompt if previous is not None else None
        slot: int | None = None
        decision: RouteDecision | None = None
        try:
            decision = await service.route(
                identity.chat, identity.character, gen_type, prompt=canonical
            )
            slot = decision.slot
        except Exception as err:  # noqa: BLE001 - logged; the request goes through
            slot = service.resident_slot(identity.chat, identity.character)
            where = (
                f"sending it to its slot {slot} anyway"
                if slot is not None
                else "sending it on without a slot (llama-server picks one)"
            )
            service.events.error(
                Kind.ROUTE,
                f"Routing {identity.character} ({identity.chat}) failed: {err}; {where}.",
            )
        if slot is not None:
            forwarded["id_slot"] = slot
            forwarded["cache_prompt"] = True
        if prompt is not None and gen_type in CHAT_TURNS and identity.sure:
            # Recorded as the client sent it: prewarm picks its own slot.
            request = {k: v for k, v in forwarded.items() if k != "id_slot"}
            service.record_prompt(identity.chat, identity.character, prompt, request)
        forwarded = await self.extras.before_forward(
            forwarded, identity, gen_type, identified.user, data.get("kvtui")
        )
        ticket = self.extras.begin(decision, identity, gen_type, slot, prompt, previous_prompt)
        routed = Routed(identity, gen_type, counts, slot, prompt, previous, result, ticket)
        return routed, forwarded

    async def _route_job(
        self, job: JobKind, identified: Identified, gen_type: GenType
    ) -> tuple[Routed | None, dict[str, Any]]:
        """A background job: the utility slot, or a lent slot given back after the reply."""
        service, identity, forwarded = self.service, identified.identity, identified.forwarded
        utility = memory_slot(service.settings)
        stack = contextlib.AsyncExitStack()
        try:
            if job == "transcript" and utility is not None:
                slot, how = utility, "the utility slot"
            else:
                own = service.resident_slot(identity.chat, identity.character)
                preferred = own if job == "quiet" and identity.sure else None
                slot = await stack.enter_async_context(service.borrowed_slot(preferred))
                how = "its own slot, parked and given back" if slot == own else "a lent slot"
        except Exception as err:  # noqa: BLE001 - logged; the request goes through unpinned
            await stack.aclose()
            service.events.error(Kind.ROUTE, f"No slot for a background job: {err}")
            return None, forwarded
        forwarded["id_slot"] = slot
        forwarded["cache_prompt"] = True
        if (
            job == "quiet"
        ):  # SillyTavern's own prompt (a summary…): its macro gets the cached recall
            forwarded = await self.extras.before_forward(
                forwarded, identity, gen_type, identified.user, None
            )
        service.events.info(
            Kind.ROUTE, f"Background job ({job}) for {identity.character}: slot {slot}, {how}."
        )
        routed = Routed(identity, gen_type, False, slot, None, None, None, None, stack)
        return routed, forwarded

    async def _finish(self, routed: Routed, observer: ReplyObserver, outcome: RelayOutcome) -> None:
        """After the reply: remember the turn, count the message, autosave when due."""
        ok = outcome.status == 200
        reply = observer.text
        # A stopped reply stays in SillyTavern's chat as it is, so it counts when it has text.
        delivered = ok and (outcome.completed or (outcome.cancelled and bool(reply)))
        if delivered and routed.classification is not None and routed.prompt is not None:
            key = (routed.identity.chat, routed.identity.character)
            self._turns[key] = remember(
                routed.previous, routed.classification, routed.prompt, reply
            )
        if routed.slot is None:
            self.extras.finish(routed, observer.final if ok else None, None)
            return
        tokens = observer.cached_tokens() if ok and outcome.completed else None
        saved: SaveOutcome | None = None
        try:
            saved = await self.service.finish_generation(
                routed.slot,
                counts_message=routed.counts_message and delivered,
                tokens=tokens,
                chat=routed.identity.chat,
                character=routed.identity.character,
            )
        except Exception as err:  # noqa: BLE001 - logged; the reply has reached the client
            self.service.events.error(
                Kind.AUTOSAVE, f"Bookkeeping after a reply in slot {routed.slot} failed: {err}"
            )
        final = observer.final if ok else None
        whole = reply if ok and outcome.completed else None
        self.extras.finish(routed, final, saved, whole)

    async def _refresh(self) -> None:
        """Poll ``/slots`` before each generation: a restarted llama-server (its task ids start
        again) is noticed before routing, so caches it lost are restored, not assumed."""
        try:
            await self.service.refresh(max_age=self.poll_max_age())
        except Exception as err:  # noqa: BLE001 - refresh never raises; logged if it does
            self.service.events.error(Kind.CONNECTION, f"Could not poll llama-server: {err!r}")


def memory_slot(settings: Any) -> int | None:
    """The slot reserved for memory jobs (``memory_slot``), if the user set one."""
    try:
        return MemorySettings.from_settings(settings).memory_slot
    except ValueError:
        return None
