"""ASGI plumbing for the proxy: the types, reading a request, answering with JSON, lifespan.

Plain functions over ``scope``/``receive``/``send`` (the shapes of starlette's ``types.py``), so
the rooms above them stay free of protocol details.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def json_error(status: int, message: str, kind: str) -> tuple[int, bytes]:
    """An error body in llama-server's (OpenAI-like) shape, so clients show the message."""
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


async def send_error(send: Send, status: int, message: str, kind: str) -> None:
    await send_json(send, *json_error(status, message, kind))


def request_target(scope: Scope) -> str:
    """The path and query as the client sent them (``raw_path`` keeps its escapes)."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) and raw else str(scope["path"])
    path = path.split("?", 1)[0]
    query = scope.get("query_string") or b""
    return f"{path}?{query.decode('latin-1')}" if query else path


def query_value(scope: Scope, key: str) -> str | None:
    raw = scope.get("query_string", b"")
    values = parse_qs(raw.decode("latin-1") if isinstance(raw, bytes) else str(raw))
    found = values.get(key)
    return found[0] if found else None


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client left before sending it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def client_gone(receive: Receive) -> None:
    """Returns once the client has disconnected."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
