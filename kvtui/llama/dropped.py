"""One retry for a kept-alive connection llama-server dropped before reading the request.

llama-server (cpp-httplib) closes an idle kept-alive connection after 5 s, and now and then at
other moments; a request written to it then fails with httpx's "Server disconnected without
sending a response" although the server never saw it. It is sent once more on a new
connection; a server that is really gone fails again, and the first error is what is raised.
"""

from __future__ import annotations

from typing import Any

import httpx

DROPPED = "Server disconnected without sending"


async def request(
    http: httpx.AsyncClient,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    limits: httpx.Timeout | None,
) -> httpx.Response:
    """``http.request`` with one retry on a dropped kept-alive connection."""
    timeout: Any = limits or httpx.USE_CLIENT_DEFAULT
    try:
        return await http.request(method, path, json=body, timeout=timeout)
    except httpx.RemoteProtocolError as err:
        if not str(err).startswith(DROPPED):
            raise
        try:
            return await http.request(method, path, json=body, timeout=timeout)
        except httpx.RequestError:
            raise err from None
