"""A recording pass-through between SillyTavern's server and kvtui's proxy, for the e2e test.

Every request is forwarded unchanged (streaming replies stream through) and recorded: method,
path, the ``X-KVTUI-*`` headers, the JSON body, and for generations the final ``timings`` of the
reply. The test waits on its counts (never on sleeps) and the capture script writes its bodies
as fixtures. It runs on uvicorn in a thread of its own, so the synchronous Playwright test can
drive the browser while it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from kvtui.proxy.run import bind_socket

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

GENERATION_PATHS = ("/completion", "/completions", "/v1/completions", "/v1/chat/completions")
_HOP = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}


@dataclass
class Recorded:
    """One request seen by the tap."""

    seq: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    started: float
    finished: float | None = None
    status: int | None = None
    timings: dict[str, Any] | None = None
    reply_text: str = ""
    raw: bytes = b""  # the request body's bytes as received

    @property
    def is_generation(self) -> bool:
        return self.method == "POST" and self.path in GENERATION_PATHS

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
            "status": self.status,
            "timings": self.timings,
        }


def _final_timings(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The last ``timings`` object and the generated text of a reply (SSE or plain JSON)."""
    timings: dict[str, Any] | None = None
    text: list[str] = []
    chunks = [raw]
    if raw.lstrip().startswith(b"data:") or b"\ndata:" in raw:
        chunks = [line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:")]
    for chunk in chunks:
        with contextlib.suppress(ValueError):
            data = json.loads(chunk)
            if not isinstance(data, dict):
                continue
            if isinstance(data.get("timings"), dict):
                timings = data["timings"]
            if isinstance(data.get("content"), str):
                text.append(data["content"])
            for choice in data.get("choices") or []:
                delta = choice.get("delta") or choice.get("message") or {}
                if isinstance(delta.get("content"), str):
                    text.append(delta["content"])
                if isinstance(choice.get("text"), str):
                    text.append(choice["text"])
    return timings, "".join(text)


@dataclass
class Tap:
    """Forwards everything to ``upstream`` and records it; ``start()`` returns once listening."""

    upstream: str
    host: str = "127.0.0.1"
    port: int = 0
    records: list[Recorded] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _server: uvicorn.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- ASGI -----------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"]
        query = scope.get("query_string", b"").decode()
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode("utf-8", "replace")
        with self._lock:
            record = Recorded(
                seq=len(self.records),
                method=scope["method"],
                path=path,
                headers={k: v for k, v in headers.items() if k.startswith("x-kvtui")},
                body=body,
                started=time.monotonic(),
                raw=raw,
            )
            self.records.append(record)
        forward = {k: v for k, v in headers.items() if k not in _HOP}
        url = self.upstream + path + (f"?{query}" if query else "")
        reply = b""
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(300.0)) as client:
                req = client.build_request(scope["method"], url, headers=forward, content=raw)
                resp = await client.send(req, stream=True)
                try:
                    out = [
                        (k.encode(), v.encode("latin-1"))
                        for k, v in resp.headers.items()
                        if k.lower() not in _HOP and k.lower() != "content-encoding"
                    ]
                    await send({"type": "http.response.start", "status": resp.status_code,
                                "headers": out})  # fmt: skip
                    record.status = resp.status_code
                    async for chunk in resp.aiter_raw():
                        reply += chunk
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})  # fmt: skip
                finally:
                    await resp.aclose()
            await send({"type": "http.response.body", "body": b""})
        except (httpx.HTTPError, OSError) as err:
            if record.status is None:
                record.status = 502
                failure = json.dumps({"error": f"tap: upstream failed: {err}"}).encode()
                await send({"type": "http.response.start", "status": 502,
                            "headers": [(b"content-type", b"application/json")]})  # fmt: skip
                await send({"type": "http.response.body", "body": failure})
        finally:
            if record.is_generation:
                record.timings, record.reply_text = _final_timings(reply)
            record.finished = time.monotonic()

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> Tap:
        sock = bind_socket(self.host, self.port)
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        server = self._server

        def serve() -> None:
            asyncio.run(server.serve(sockets=[sock]))

        self._thread = threading.Thread(target=serve, name="e2e-tap", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the recording tap did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = self._thread = None

    # -- queries --------------------------------------------------------------------------
    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self.records)

    def generations(self) -> list[Recorded]:
        return [r for r in self.snapshot() if r.is_generation]

    def finished_generations(self) -> list[Recorded]:
        return [r for r in self.generations() if r.finished is not None]

    def events(self) -> list[Recorded]:
        return [r for r in self.snapshot() if r.path.startswith("/kvtui/v1/")]
