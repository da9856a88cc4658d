"""The relay: one request to llama-server, its answer streamed back to the client as it arrives.

Bytes pass through untouched (an observer may watch them). A client that disconnects cancels
the relay, which closes the upstream connection: that is how llama-server learns to stop
generating. No read timeout: a long prompt on a big model takes minutes before the first byte.
Plain ``http://`` upstreams go through the lean client of :mod:`kvtui.proxy.upstream` (a streamed
token costs tens of µs there, not the ~150 µs of httpx); any other URL through httpx.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import httpx

from kvtui.events import EventLog, Kind
from kvtui.proxy.asgi import Receive, Send, client_gone, send_error
from kvtui.proxy.headers import RawHeaders, response_headers
from kvtui.proxy.observer import ReplyObserver
from kvtui.proxy.upstream import UpstreamBroke, UpstreamPool, UpstreamUnreachable, supports


@dataclass(frozen=True)
class UpstreamRequest:
    """What goes to llama-server: ``base`` is its address (for messages), ``url`` the target."""

    method: str
    base: str
    url: str
    headers: RawHeaders
    body: bytes


@dataclass
class RelayOutcome:
    """How one relayed request ended."""

    status: int | None = None
    completed: bool = False  # the whole reply reached the client
    cancelled: bool = False  # the client disconnected first


class Relay:
    """Relays requests over one pooled HTTP client. ``await relay.aclose()`` when done."""

    def __init__(self, events: EventLog) -> None:
        self.events = events
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(10.0, read=None, write=60.0, pool=None)
        )
        self.pool = UpstreamPool()

    async def aclose(self) -> None:
        await self.pool.aclose()
        await self.client.aclose()

    async def forward(
        self,
        request: UpstreamRequest,
        receive: Receive,
        send: Send,
        observer: ReplyObserver | None = None,
    ) -> RelayOutcome:
        """Relay ``request``; a client disconnect cancels it."""
        outcome = RelayOutcome()
        how = self._lean if supports(request.url) else self._relay
        relay = asyncio.create_task(how(request, send, observer, outcome))
        gone = asyncio.create_task(client_gone(receive))
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

    async def _unreachable(self, request: UpstreamRequest, send: Send, detail: str) -> None:
        message = (
            f"kvtui proxy: llama-server at {request.base} is unreachable ({detail}). Start "
            "llama-server, or point kvtui at it with --server URL (server_url in the config file)."
        )
        self.events.error(Kind.CONNECTION, message)
        await send_error(send, 502, message, "proxy_error")

    async def _lean(
        self,
        request: UpstreamRequest,
        send: Send,
        observer: ReplyObserver | None,
        outcome: RelayOutcome,
    ) -> None:
        """The relay over :class:`UpstreamPool` (plain HTTP)."""
        try:
            upstream = await self.pool.request(
                request.method, request.url, request.headers, request.body
            )
        except UpstreamUnreachable as err:
            outcome.status = 502
            await self._unreachable(request, send, str(err))
            return
        try:
            outcome.status = upstream.status
            if observer is not None:
                observer.streaming = "text/event-stream" in upstream.header(b"content-type")
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status,
                    "headers": response_headers(upstream.headers),
                }
            )
            try:
                async for chunk in upstream.body():
                    if observer is not None:
                        observer.feed(chunk)
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except UpstreamBroke as err:
                self.events.error(
                    Kind.CONNECTION, f"llama-server broke off a reply to {request.url}: {err}"
                )
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            outcome.completed = True
        finally:
            await upstream.aclose()
            if observer is not None:
                observer.finish()

    async def _relay(
        self,
        request: UpstreamRequest,
        send: Send,
        observer: ReplyObserver | None,
        outcome: RelayOutcome,
    ) -> None:
        # A bare Request: the client's default headers (Accept-Encoding, User-Agent) stay out.
        upstream_request = httpx.Request(
            request.method, request.url, headers=request.headers, content=request.body
        )
        try:
            upstream = await self.client.send(upstream_request, stream=True)
        except httpx.HTTPError as err:
            outcome.status = 502
            await self._unreachable(request, send, f"{type(err).__name__}: {err or 'no answer'}")
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
                    # No extra yield per chunk: each read from llama-server awaits its socket,
                    # so the disconnect watcher runs between tokens anyway.
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.HTTPError as err:
                # Headers are gone already: end without completing, so the client sees a cut.
                self.events.error(
                    Kind.CONNECTION, f"llama-server broke off a reply to {request.url}: {err!r}"
                )
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            outcome.completed = True
        finally:
            await upstream.aclose()
            if observer is not None:
                observer.finish()
