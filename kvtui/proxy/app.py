"""The routing proxy: a plain ASGI app between SillyTavern (or any client) and llama-server.

Every route and method is forwarded to llama-server; responses, Server-Sent Events included, go
back byte-for-byte as they arrive. A client that disconnects closes the upstream request, so
llama-server stops generating. Generation requests are routed first: kvtui identifies the chat and
character, classifies the generation against the character's previous request, makes a slot ready
(restoring the character's latest save when it is not resident), pins the request to that slot
with ``id_slot`` and, once the reply is complete, counts the message and autosaves every N.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from kvtui.events import Kind
from kvtui.proxy.gentype import (
    Classification,
    TurnMemory,
    classify_generation,
    classify_request,
    remember,
    request_prompt,
    request_stop,
)
from kvtui.proxy.identity import Identity, infer_identity
from kvtui.proxy.recorder import PromptRecorder
from kvtui.service import KvService
from kvtui.slots import GenType

if TYPE_CHECKING:
    from kvtui.automatic import ChatSwitchWatcher
    from kvtui.sillytavern import SillyTavernData

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

GENERATION_PATHS = frozenset(
    {"/completion", "/completions", "/v1/completions", "/v1/chat/completions"}
)
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Not hop-by-hop, but recomputed: the body may be rewritten, and httpx sets the upstream host.
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length"}
_MAX_JSON_BODY = 64 * 1024 * 1024


def json_error(status: int, message: str, kind: str) -> tuple[int, bytes]:
    body = {"error": {"code": status, "message": message, "type": kind}}
    return status, json.dumps(body, ensure_ascii=False).encode()


async def send_json(send: Send, status: int, payload: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json; charset=utf-8"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload, "more_body": False})


class ReplyObserver:
    """Watches a reply pass through, untouched, and keeps what the bookkeeping needs.

    For streams it splits Server-Sent Events and keeps the last JSON event that carries
    ``timings`` (llama-server's final event) and the generated text; for plain replies it keeps
    the body (bounded) and parses it at the end. ``on_end`` is called once, before the chunk
    that lets the client see the reply is complete (the final event, or a plain reply's body)
    is passed on.
    """

    def __init__(self, streaming: bool, on_end: Callable[[], None] | None = None) -> None:
        self.streaming = streaming
        self._buffer = bytearray()
        self._overflow = False
        self._on_end = on_end
        self.final: dict[str, Any] | None = None
        self.text_parts: list[str] = []

    def _ending(self) -> None:
        if self._on_end is not None:
            callback, self._on_end = self._on_end, None
            callback()

    def feed(self, chunk: bytes) -> None:
        if not self.streaming:
            self._ending()
            if len(self._buffer) + len(chunk) > _MAX_JSON_BODY:
                self._overflow = True
            else:
                self._buffer += chunk
            return
        self._buffer += chunk.replace(b"\r\n", b"\n")
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                break
            event = bytes(self._buffer[:end])
            del self._buffer[: end + 2]
            self._event(event)

    def _event(self, event: bytes) -> None:
        data = b"\n".join(
            line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
        )
        if not data or data.strip() == b"[DONE]":
            return
        try:
            obj = json.loads(data)
        except ValueError:
            return
        if isinstance(obj, dict):
            self._take(obj)

    def _take(self, obj: dict[str, Any]) -> None:
        text = reply_text(obj) if obj.get("index", 0) == 0 else ""  # n > 1: the first reply
        if text:
            self.text_parts.append(text)
        if "timings" in obj or obj.get("stop") is True:
            self.final = obj
            self._ending()

    def finish(self) -> None:
        if self.streaming:
            if self._buffer.strip():
                self._event(bytes(self._buffer))
            self._buffer.clear()
            return
        if self._overflow:
            return
        try:
            obj = json.loads(self._buffer)
        except ValueError:
            return
        if isinstance(obj, dict):
            self._take(obj)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def cached_tokens(self) -> int | None:
        """Tokens in the slot after the reply: ``tokens_cached``, else summed ``timings``."""
        final = self.final
        if final is None:
            return None
        cached = final.get("tokens_cached")
        if isinstance(cached, int) and not isinstance(cached, bool):
            return cached
        timings = final.get("timings")
        if isinstance(timings, dict):
            parts = [timings.get(k) for k in ("cache_n", "prompt_n", "predicted_n")]
            if all(isinstance(p, int) for p in parts):
                return sum(p for p in parts if isinstance(p, int))
        return None


def reply_text(obj: dict[str, Any]) -> str:
    """The generated text in a llama-server reply or stream event, any of its API shapes."""
    content = obj.get("content")
    if isinstance(content, str):
        return content
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    for holder in (choice, choice.get("delta"), choice.get("message")):
        if isinstance(holder, dict):
            for key in ("text", "content"):
                value = holder.get(key)
                if isinstance(value, str):
                    return value
    return ""


def upstream_headers(
    raw: list[tuple[bytes, bytes]], api_key: str | None
) -> list[tuple[bytes, bytes]]:
    """The client's headers minus hop-by-hop ones and kvtui's own; the API key when set."""
    listed = {
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    drop = _REQUEST_DROP | listed
    headers = [
        (name, value)
        for name, value in raw
        if name.lower() not in drop and not name.lower().startswith(b"x-kvtui-")
    ]
    if api_key:
        headers = [(n, v) for n, v in headers if n.lower() != b"authorization"]
        headers.append((b"authorization", f"Bearer {api_key}".encode()))
    return headers


def response_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    listed = {
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    return [(n, v) for n, v in raw if n.lower() not in HOP_BY_HOP and n.lower() not in listed]


def _target(scope: Scope) -> str:
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) and raw else str(scope["path"])
    path = path.split("?", 1)[0]
    query = scope.get("query_string") or b""
    return f"{path}?{query.decode('latin-1')}" if query else path


def _header_map(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    def text(value: bytes) -> str:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")

    return {text(name).lower(): text(value) for name, value in raw}


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client left before sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _client_gone(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


@dataclass
class _Outcome:
    """How one forwarded request ended."""

    status: int | None = None
    completed: bool = False  # the whole reply reached the client
    cancelled: bool = False  # the client disconnected first


@dataclass
class _Routed:
    """A generation request after routing, kept until its reply is complete."""

    identity: Identity
    gen_type: GenType
    counts_message: bool
    slot: int | None
    prompt: str | None
    previous: TurnMemory | None
    classification: Classification | None  # None for token-id prompts


_CHAT_TURNS = frozenset({GenType.NORMAL, GenType.REGENERATE, GenType.SWIPE, GenType.CONTINUE})


class ProxyApp:
    """The ASGI app. Create it with :func:`make_proxy_app`; ``await app.aclose()`` when done."""

    def __init__(
        self,
        service: KvService,
        *,
        upstream_url: str,
        api_key: str | None,
        recorder: PromptRecorder,
        st_data: SillyTavernData | None = None,
        watcher: ChatSwitchWatcher | None = None,
    ) -> None:
        if watcher is None and st_data is not None:
            from kvtui.automatic import ChatSwitchWatcher

            watcher = ChatSwitchWatcher(service, st_data)
        self.service = service
        self.upstream_url = upstream_url.rstrip("/")
        self.api_key = api_key
        self.recorder = recorder
        self.st_data = st_data
        self.watcher = watcher
        # No read timeout: a long prompt on a big model takes minutes before the first byte.
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, read=None, write=60.0, pool=None)
        )
        self._turns: dict[tuple[str, str], TurnMemory | None] = {}
        self._settling: set[asyncio.Future[None]] = set()

    async def aclose(self) -> None:
        await self.client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets are not proxied (llama-server has none)
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._http(scope, receive, tracking_send)
        except Exception as err:  # one bad request must never take the proxy down
            self.service.events.error(
                Kind.ERROR, f"Proxy: {scope.get('method')} {scope.get('path')} failed: {err!r}"
            )
            if not started:
                await send_json(send, *json_error(500, f"kvtui proxy: {err!r}", "proxy_error"))

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if body is None:
            return
        method = str(scope["method"])
        target = self.upstream_url + _target(scope)
        headers = upstream_headers(list(scope["headers"]), self.api_key)
        if method == "POST" and str(scope["path"]).startswith("/slots/"):
            await self._slot_action(scope, receive, send, target, headers, body)
            return
        if method != "POST" or scope["path"] not in GENERATION_PATHS:
            await self._forward(receive, send, method, target, headers, body, None)
            return
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, ValueError) as err:
            message = (
                f"kvtui proxy: the body of POST {scope['path']} is not valid JSON ({err}). "
                'Send a JSON object, e.g. {"prompt": "Hello", "n_predict": 16}.'
            )
            await send_json(send, *json_error(400, message, "invalid_request_error"))
            return
        if not isinstance(data, dict):
            message = (
                f"kvtui proxy: the body of POST {scope['path']} must be a JSON object, "
                f"not {type(data).__name__}."
            )
            await send_json(send, *json_error(400, message, "invalid_request_error"))
            return
        routed, forwarded = await self._route(scope, data)
        payload = json.dumps(forwarded, ensure_ascii=False).encode()
        settling: list[asyncio.Future[None]] = []

        def begin_settling() -> None:
            if not settling:
                settling.append(asyncio.get_running_loop().create_future())
                self._settling.add(settling[0])

        observer = ReplyObserver(streaming=False, on_end=begin_settling)
        try:
            outcome = await self._forward(receive, send, method, target, headers, payload, observer)
            begin_settling()
            if routed is not None:
                await self._finish(routed, observer, outcome)
        finally:
            for future in settling:
                future.set_result(None)
                self._settling.discard(future)

    async def settled(self) -> None:
        """Wait until the bookkeeping of every reply the client has seen end is done.

        The client gets the end of a reply before kvtui counts it and autosaves (a save of a
        big cache takes seconds; the user should not wait for it). The next routing waits for
        that, so a group's next speaker never evicts a slot whose reply is still being booked.
        """
        while self._settling:
            await asyncio.wait(set(self._settling))

    # -- forwarding ------------------------------------------------------------------------

    async def _slot_action(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        """A client's own save/restore/erase: checked like kvtui's, and the book told.

        llama-server wraps out-of-range slot ids (overwriting files) and wipes a slot whose
        restore fails, so those are refused here; after any action on a slot kvtui no longer
        knows whose cache is in it, so the slot is released in the book.
        """
        path = str(scope["path"])
        action = _query_value(scope, "action")
        try:
            slot = int(path.removeprefix("/slots/").strip("/"))
        except ValueError:
            slot = None  # llama-server answers "Invalid slot ID" itself
        if slot is not None:
            total = self.service.client.total_slots or self.service.book.n_slots
            problem = None
            if not 0 <= slot < total:
                problem = f"slot {slot} does not exist (the server has slots 0 to {total - 1})"
            elif action == "restore" and self.service.store is not None:
                try:
                    filename = json.loads(body).get("filename")
                except (ValueError, AttributeError):
                    filename = None
                if isinstance(filename, str) and not self.service.store.exists(filename):
                    problem = f"no save file named {filename!r} (a failed restore wipes the slot)"
            if problem is not None:
                message = f"kvtui proxy: refused {action or 'slot action'}: {problem}."
                await send_json(send, *json_error(400, message, "invalid_request_error"))
                return
        if slot is not None and action in ("restore", "erase"):
            # Before forwarding: once the client sees the answer, the book must already agree.
            async with self.service.lock:
                record = self.service.book.record(slot)
                if record.occupied:
                    self.service.book.release(slot)
                    self.service.persist()
                    self.service.events.warning(
                        Kind.ROUTE,
                        f"A client ran {action} on slot {slot} directly; {record.character} is "
                        "no longer counted as in it.",
                    )
        await self._forward(receive, send, "POST", target, headers, body, None)

    async def _forward(
        self,
        receive: Receive,
        send: Send,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        observer: ReplyObserver | None,
    ) -> _Outcome:
        """Relay one request; a client disconnect cancels it (closing the upstream connection,
        which is how llama-server learns to stop generating)."""
        outcome = _Outcome()
        relay = asyncio.create_task(
            self._relay(send, method, target, headers, body, observer, outcome)
        )
        gone = asyncio.create_task(_client_gone(receive))
        try:
            await asyncio.wait({relay, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not relay.done():
                outcome.cancelled = gone.done()
                relay.cancel()
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone
            with contextlib.suppress(asyncio.CancelledError):
                await relay
        return outcome

    async def _relay(
        self,
        send: Send,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        observer: ReplyObserver | None,
        outcome: _Outcome,
    ) -> None:
        # A bare Request: the client's default headers (Accept-Encoding, User-Agent) stay out.
        request = httpx.Request(method, target, headers=headers, content=body)
        try:
            upstream = await self.client.send(request, stream=True)
        except httpx.HTTPError as err:
            outcome.status = 502
            message = (
                f"kvtui proxy: llama-server at {self.upstream_url} is unreachable "
                f"({type(err).__name__}: {err or 'no answer'}). Start llama-server, or point "
                "kvtui at it with --server URL (server_url in the config file)."
            )
            self.service.events.error(Kind.CONNECTION, message)
            await send_json(send, *json_error(502, message, "proxy_error"))
            return
        try:
            outcome.status = upstream.status_code
            if observer is not None:
                observer.streaming = "text/event-stream" in upstream.headers.get("content-type", "")
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status_code,
                    "headers": response_headers(upstream.headers.raw),
                }
            )
            try:
                async for chunk in upstream.aiter_raw():
                    if observer is not None:
                        observer.feed(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                    # Let the server notice a client that went away before the next write.
                    await asyncio.sleep(0)
            except httpx.HTTPError as err:
                # Headers are gone already: end without completing, so the client sees a cut.
                self.service.events.error(
                    Kind.CONNECTION, f"llama-server broke off a reply to {target}: {err!r}"
                )
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            outcome.completed = True
        finally:
            await upstream.aclose()
            if observer is not None:
                observer.finish()

    # -- routing ---------------------------------------------------------------------------

    async def _chat_context(self) -> tuple[str | None, list[str], list[str]]:
        """The active SillyTavern chat (switching to it first), its members and user name."""
        current = self.service.current_chat
        if self.watcher is None or self.st_data is None:
            return current, [], []
        try:
            ref = await self.watcher.active()
            if ref is None:
                return current, [], []
            await self.watcher.ensure(ref)
            members = self.watcher.cached_members(ref.chat_id)
            if members is None:
                members = await self.watcher.members(ref)
            user = await asyncio.to_thread(self.st_data.user_name)
            return ref.chat_id, [m.name for m in members], [user]
        except Exception as err:  # a damaged data directory must not block generations
            self.service.events.error(
                Kind.CHAT_SWITCH, f"Could not read SillyTavern's active chat: {err!r}"
            )
            return current, [], []

    async def _recall(self, chat: str, character: str) -> TurnMemory | None:
        """The character's last turn: in memory, else rebuilt from the recorded prompt (so a
        swipe right after a kvtui restart is still recognised as one)."""
        key = (chat, character)
        if key in self._turns:
            return self._turns[key]
        memory: TurnMemory | None = None
        recorded = await asyncio.to_thread(self.recorder.last_request, chat, character)
        if recorded is not None:
            result = classify_generation(
                recorded.prompt, stop=request_stop(recorded.body), character=character
            )
            memory = remember(None, result, recorded.prompt, "")
        self._turns[key] = memory
        return memory

    async def _route(
        self, scope: Scope, data: dict[str, Any]
    ) -> tuple[_Routed | None, dict[str, Any]]:
        """Identify, classify and route a generation; returns what to forward. Never raises:
        if kvtui's own routing fails the request still goes through (logged)."""
        await self.settled()
        await self._refresh()
        try:
            chat, members, users = await self._chat_context()
            identity, forwarded = infer_identity(
                data,
                _header_map(list(scope["headers"])),
                members=members,
                current_chat=chat,
                user_names=users,
            )
            previous = await self._recall(identity.chat, identity.character)
            result = classify_request(
                forwarded,
                previous,
                character=identity.character,
                user_name=users[0] if users else None,
                declared=identity.declared_type,
            )
        except Exception as err:
            self.service.events.error(Kind.ROUTE, f"Could not identify a request: {err!r}")
            return None, {k: v for k, v in data.items() if k != "kvtui"}
        gen_type = result.gen_type if result is not None else GenType.NORMAL
        counts = result.counts_message if result is not None else True
        slot: int | None = None
        try:
            decision = await self.service.route(identity.chat, identity.character, gen_type)
            slot = decision.slot
        except Exception as err:
            slot = self.service.book.find(identity.chat, identity.character)
            where = (
                f"sending it to its slot {slot} anyway"
                if slot is not None
                else "sending it on without a slot (llama-server picks one)"
            )
            self.service.events.error(
                Kind.ROUTE,
                f"Routing {identity.character} ({identity.chat}) failed: {err}; {where}.",
            )
        if slot is not None:
            forwarded["id_slot"] = slot
            forwarded["cache_prompt"] = True
        prompt = request_prompt(forwarded)
        if prompt is not None and gen_type in _CHAT_TURNS:
            try:
                # Recorded as the client sent it: prewarm picks its own slot.
                request = {k: v for k, v in forwarded.items() if k != "id_slot"}
                await asyncio.to_thread(
                    self.recorder.record, identity.chat, identity.character, prompt, request
                )
            except OSError as err:
                self.service.events.error(Kind.ERROR, f"Could not record a prompt: {err}")
        routed = _Routed(identity, gen_type, counts, slot, prompt, previous, result)
        return routed, forwarded

    async def _finish(self, routed: _Routed, observer: ReplyObserver, outcome: _Outcome) -> None:
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
            return
        tokens = observer.cached_tokens() if ok and outcome.completed else None
        try:
            await self.service.finish_generation(
                routed.slot,
                counts_message=routed.counts_message and delivered,
                tokens=tokens,
                chat=routed.identity.chat,
                character=routed.identity.character,
            )
        except Exception as err:
            self.service.events.error(
                Kind.AUTOSAVE, f"Bookkeeping after a reply in slot {routed.slot} failed: {err}"
            )
        await self._refresh()

    async def _refresh(self) -> None:
        """Poll ``/slots`` around each generation: a restarted llama-server (its task ids start
        again) is noticed before routing, so caches it lost are restored, not assumed."""
        try:
            await self.service.refresh(max_age=0.25)
        except Exception as err:
            self.service.events.error(Kind.CONNECTION, f"Could not poll llama-server: {err!r}")


def make_proxy_app(
    service: KvService,
    *,
    upstream_url: str,
    api_key: str | None,
    recorder: PromptRecorder,
    st_data: SillyTavernData | None = None,
    watcher: ChatSwitchWatcher | None = None,
) -> ProxyApp:
    """The routing proxy's ASGI app for ``service``, forwarding to ``upstream_url``."""
    return ProxyApp(
        service,
        upstream_url=upstream_url,
        api_key=api_key,
        recorder=recorder,
        st_data=st_data,
        watcher=watcher,
    )


def _query_value(scope: Scope, key: str) -> str | None:
    from urllib.parse import parse_qs

    raw = scope.get("query_string", b"")
    values = parse_qs(raw.decode("latin-1") if isinstance(raw, bytes) else str(raw))
    found = values.get(key)
    return found[0] if found else None
