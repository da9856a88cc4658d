"""The routing proxy's ASGI app: the dispatcher between SillyTavern (or any client) and
llama-server.

Every route and method is forwarded to llama-server by the relay (:mod:`kvtui.proxy.relay`);
answers, Server-Sent Events included, go back byte-for-byte as they arrive. Generation requests
are routed first (:mod:`kvtui.proxy.routing`); a client's own slot actions are checked by the
service before they are forwarded. The upstream address and API key are read from the service's
settings on every request, so a change in the settings form applies to the next request.
"""

from __future__ import annotations

import json
from typing import Any

from kvtui.events import Kind
from kvtui.proxy.asgi import (
    Message,
    Receive,
    Scope,
    Send,
    lifespan,
    query_value,
    request_target,
    send_error,
)
from kvtui.proxy.companion import PREFIX, Companion
from kvtui.proxy.extras import RouterExtras
from kvtui.proxy.guard import (
    Refusal,
    check_api_key,
    check_host,
    check_origin,
    cors_headers,
    parse_json_object,
    parse_slot_path,
    read_body,
    strip_cors,
)
from kvtui.proxy.headers import header_map, upstream_headers
from kvtui.proxy.observer import ReplyObserver
from kvtui.proxy.relay import Relay, RelayOutcome, UpstreamRequest
from kvtui.proxy.routing import POLL_MAX_AGE, GenerationRouter
from kvtui.service import KvService

GENERATION_PATHS = frozenset(
    {"/completion", "/completions", "/v1/completions", "/v1/chat/completions"}
)
KEPT_ALIVE_POLL_AGE = 1.0
"""Seconds a poll stands for the server while a kept-alive connection shows it did not restart
(bounded: behind another proxy, a restart of llama-server leaves kvtui's connection open)."""
_ROUTING_KEYS = frozenset({"id_slot", "cache_prompt"})


class ProxyApp:
    """The ASGI app. Create it with :func:`make_proxy_app`; ``await app.aclose()`` when done."""

    def __init__(self, service: KvService) -> None:
        self.service = service
        self.relay = Relay(service.events)
        self.companion = Companion(service)
        self.extras = RouterExtras(service, self.companion)
        self.router = GenerationRouter(service, self.extras)
        self.router.poll_max_age = self._poll_max_age

    def _poll_max_age(self) -> float:
        """A ``/slots`` poll up to a second old stands for the server while a connection to it
        older than that is still open (a restarted llama-server closed it); else 0.25 s."""
        if self.relay.pool.kept_alive(self.service.settings.server_url, KEPT_ALIVE_POLL_AGE):
            return KEPT_ALIVE_POLL_AGE
        return POLL_MAX_AGE

    async def aclose(self) -> None:
        await self.relay.aclose()
        await self.extras.aclose()

    async def settled(self) -> None:
        """Wait until the bookkeeping of every reply the client has seen end is done, its
        disk writes (slot book, recorded prompt) included."""
        await self.router.settled()
        await self.service.flush()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
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
        except Exception as err:  # noqa: BLE001 - one bad request must never take the proxy down
            self.service.events.error(
                Kind.ERROR, f"Proxy: {scope.get('method')} {scope.get('path')} failed: {err!r}"
            )
            if not started:
                await send_error(send, 500, f"kvtui proxy: {err!r}", "proxy_error")

    def _upstream(self, scope: Scope, body: bytes) -> UpstreamRequest:
        """The request for llama-server, addressed by the settings in force now."""
        settings = self.service.settings
        base = settings.server_url.rstrip("/")
        return UpstreamRequest(
            method=str(scope["method"]),
            base=base,
            url=base + request_target(scope),
            headers=upstream_headers(list(scope["headers"]), settings.api_key),
            body=body,
        )

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        settings = self.service.settings
        headers = header_map(list(scope["headers"]))
        method, path = str(scope["method"]), str(scope["path"])
        origin = headers.get("origin")
        refusal = (
            check_host(headers.get("host"), settings.listen_host, settings.allowed_hosts)
            or check_origin(origin, settings.allowed_origins)
            or check_api_key(path, headers, settings.api_key)
        )
        if refusal is not None:
            await _refuse(send, refusal)
            return
        cors = cors_headers(origin, settings.allowed_origins)
        if cors:
            if method == "OPTIONS":
                await _preflight(send, cors, headers)
                return
            send = _with_cors(send, cors)
        limit = int(settings.max_body_mb * 1024 * 1024)
        body = await read_body(receive, limit, headers.get("content-length"))
        if body is None:
            return
        if isinstance(body, Refusal):
            await _refuse(send, body)
            return
        if path.startswith(PREFIX):
            await self.companion.handle(scope, send, body)
        elif method == "POST" and path.startswith("/slots/"):
            await self._slot_action(scope, receive, send, body)
        elif method == "POST" and path in GENERATION_PATHS:
            await self._generation(scope, receive, send, body, headers)
        else:
            await self.relay.forward(self._upstream(scope, body), receive, send)

    async def _slot_action(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        """A client's own save/restore/erase: checked like kvtui's, and the book told."""
        action = query_value(scope, "action")
        raw = scope.get("raw_path")
        raw_path = raw.decode("latin-1").split("?", 1)[0] if isinstance(raw, bytes) else ""
        slot = parse_slot_path(raw_path or str(scope["path"]), str(scope["path"]))
        if isinstance(slot, Refusal):
            await _refuse(send, slot)
            return
        data = parse_json_object(body, str(scope["path"])) if body.strip() else {}
        if isinstance(data, Refusal):  # llama-server would act on a malformed body anyway
            await _refuse(send, data)
            return
        filename = data.get("filename") if action in ("save", "restore") else None
        problem = await self.service.client_slot_action(
            slot, action, filename if isinstance(filename, str) else None
        )
        if problem is not None:
            message = f"kvtui proxy: refused {action or 'slot action'}: {problem}."
            await send_error(send, 400, message, "invalid_request_error")
            return
        await self.relay.forward(self._upstream(scope, body), receive, send)

    async def _generation(
        self, scope: Scope, receive: Receive, send: Send, body: bytes, headers: dict[str, str]
    ) -> None:
        data = parse_json_object(body, str(scope["path"]))
        if isinstance(data, Refusal):
            await _refuse(send, data)
            return
        routed, forwarded = await self.router.route(headers, data)
        payload = _payload(body, data, forwarded)

        async def forward(observer: ReplyObserver) -> RelayOutcome:
            return await self.relay.forward(self._upstream(scope, payload), receive, send, observer)

        await self.router.serve(routed, forward)


def _payload(body: bytes, data: dict[str, Any], forwarded: dict[str, Any]) -> bytes:
    """The body to forward. When routing only added ``id_slot`` / ``cache_prompt`` (nearly
    always), they are written in front of the client's own bytes instead of encoding the whole
    prompt again; anything else is encoded anew."""
    added = forwarded.keys() - data.keys()
    if (
        added <= _ROUTING_KEYS
        and len(forwarded) == len(data) + len(added)
        and all(forwarded[k] is v for k, v in data.items())
    ):
        start = body.lstrip()
        if not added:
            return body
        if start.startswith(b"{") and start[1:].lstrip()[:1] not in (b"}", b""):
            head = b"".join(
                json.dumps(k).encode() + b":" + json.dumps(forwarded[k]).encode() + b","
                for k in sorted(added)
            )
            return b"{" + head + start[1:]
    return json.dumps(forwarded, ensure_ascii=False).encode()


async def _refuse(send: Send, refusal: Refusal) -> None:
    await send_error(send, refusal.status, refusal.message, refusal.kind)


async def _preflight(send: Send, cors: list[tuple[bytes, bytes]], headers: dict[str, str]) -> None:
    """Answer an allowed page's CORS preflight here (llama-server would allow any page)."""
    asked = headers.get("access-control-request-headers", "content-type")
    await send(
        {
            "type": "http.response.start",
            "status": 204,
            "headers": [
                *cors,
                (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
                (b"access-control-allow-headers", asked.encode("latin-1", "replace")),
                (b"access-control-max-age", b"600"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _with_cors(send: Send, cors: list[tuple[bytes, bytes]]) -> Send:
    """``send`` with llama-server's CORS headers replaced by kvtui's for an allowed page."""

    async def send_with_cors(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*strip_cors(message.get("headers", [])), *cors]}
        await send(message)

    return send_with_cors


def make_proxy_app(service: KvService) -> ProxyApp:
    """The routing proxy's ASGI app for ``service``, forwarding to its server."""
    return ProxyApp(service)
