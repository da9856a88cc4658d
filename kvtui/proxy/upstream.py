"""A lean HTTP/1.1 client for the relay: one request to llama-server over a kept-alive connection,
its body handed on in the pieces the socket delivers.

The relay's hot path is a stream of Server-Sent Events, one small chunk per token. A general
client (httpx over httpcore, anyio and h11) spends ~150 µs of Python per chunk; this one reads
what the socket has (several tokens at once when the proxy falls behind), strips the chunked
framing with ``bytes.find`` and passes the payload on: tens of µs per read. Only plain
``http://`` upstreams use it (:func:`supports`); anything else goes through httpx.

Errors the caller tells apart: :class:`UpstreamUnreachable` before any answer arrived (nothing
was sent to the client yet), :class:`UpstreamBroke` once the answer had begun.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

RawHeaders = list[tuple[bytes, bytes]]
CONNECT_TIMEOUT = 10.0
WRITE_TIMEOUT = 60.0
READ_SIZE = 64 * 1024
MAX_HEAD = 256 * 1024
"""Status line and headers larger than this are not an HTTP answer."""
MAX_IDLE = 8
_NO_BODY_STATUS = frozenset({204, 304})


class UpstreamUnreachable(Exception):
    """No answer from the upstream (connect, send or the answer's head failed)."""


class UpstreamBroke(Exception):
    """The upstream broke off an answer that had begun."""


def supports(url: str) -> bool:
    """Whether ``url`` is one this client speaks to (plain HTTP with a host)."""
    return url.startswith("http://") and bool(urlsplit(url).hostname)


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    opened: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()

    @property
    def usable(self) -> bool:
        # An idle connection the server closed reads as EOF (or is closing) before reuse.
        return not self.writer.is_closing() and not self.reader.at_eof()


@dataclass
class UpstreamResponse:
    """An answer whose head has arrived; iterate :meth:`body` for the rest (once)."""

    status: int
    headers: RawHeaders
    _conn: _Conn
    _pool: UpstreamPool
    _key: tuple[str, int]
    _framing: str  # "chunked" | "length" | "close" | "none"
    _length: int = 0
    _reusable: bool = True
    _done: bool = field(default=False, init=False)

    def header(self, name: bytes) -> str:
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return ""

    async def body(self) -> AsyncIterator[bytes]:
        """The payload as it arrives (chunked framing removed); raises :class:`UpstreamBroke`."""
        try:
            if self._framing == "chunked":
                async for piece in self._chunked():
                    yield piece
            elif self._framing == "length":
                async for piece in self._sized():
                    yield piece
            elif self._framing == "close":
                self._reusable = False
                while data := await self._conn.reader.read(READ_SIZE):
                    yield data
            self._done = True
        except (OSError, asyncio.IncompleteReadError, ValueError) as err:
            raise UpstreamBroke(f"{type(err).__name__}: {err}") from err

    async def _sized(self) -> AsyncIterator[bytes]:
        remaining = self._length
        while remaining > 0:
            data = await self._conn.reader.read(min(READ_SIZE, remaining))
            if not data:
                raise asyncio.IncompleteReadError(b"", remaining)
            remaining -= len(data)
            yield data

    async def _chunked(self) -> AsyncIterator[bytes]:
        buffer = b""
        reader = self._conn.reader
        while True:
            out: list[bytes] = []
            pos = 0
            while True:  # every complete chunk in the buffer
                end = buffer.find(b"\r\n", pos)
                if end < 0:
                    break
                size = int(buffer[pos:end].split(b";", 1)[0].strip() or b"x", 16)
                if size == 0:
                    trailer_end = buffer.find(b"\r\n\r\n", end)
                    if buffer[end : end + 4] == b"\r\n\r\n" or trailer_end >= 0:
                        if out:
                            yield b"".join(out)
                        stop = end + 4 if buffer[end : end + 4] == b"\r\n\r\n" else trailer_end + 4
                        self._reusable = self._reusable and stop == len(buffer)
                        return
                    break
                start = end + 2
                if len(buffer) < start + size + 2:
                    break
                out.append(buffer[start : start + size])
                pos = start + size + 2
            if out:
                yield out[0] if len(out) == 1 else b"".join(out)
            buffer = buffer[pos:]
            data = await reader.read(READ_SIZE)
            if not data:
                raise asyncio.IncompleteReadError(b"", None)
            buffer = buffer + data if buffer else data

    async def aclose(self) -> None:
        """Give the connection back when the answer was read whole, else close it."""
        conn, self._framing = self._conn, "none"
        if self._done and self._reusable:
            self._pool.release(self._key, conn)
        else:
            conn.close()


class UpstreamPool:
    """Kept-alive connections per host and port. ``await pool.aclose()`` when done."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Conn]] = {}
        self._targets: dict[str, tuple[str, int, bytes, str]] = {}

    def _target(self, url: str) -> tuple[str, int, bytes, str]:
        """(host, port, Host header, path and query) of ``url``, parsed once per URL."""
        found = self._targets.get(url)
        if found is None:
            parts = urlsplit(url)
            host = parts.hostname or "127.0.0.1"
            port = parts.port or 80
            shown = f"[{host}]" if ":" in host else host
            host_header = _ascii(shown if port == 80 else f"{shown}:{port}")
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            found = (host, port, host_header, target)
            if len(self._targets) > 1024:
                self._targets.clear()
            self._targets[url] = found
        return found

    def kept_alive(self, url: str, seconds: float) -> bool:
        """Whether an idle connection to ``url``'s server, opened at least ``seconds`` ago, is
        still open: the server process has not changed since (a restart closes every
        connection; not so behind another proxy, which is why the caller bounds ``seconds``)."""
        host, port, _, _ = self._target(url)
        now = time.monotonic()
        return any(c.usable and now - c.opened >= seconds for c in self._idle.get((host, port), ()))

    def release(self, key: tuple[str, int], conn: _Conn) -> None:
        idle = self._idle.setdefault(key, [])
        if conn.usable and len(idle) < MAX_IDLE:
            idle.append(conn)
        else:
            conn.close()

    async def _connect(self, key: tuple[str, int]) -> tuple[_Conn, bool]:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.usable:
                return conn, True
            conn.close()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(key[0], key[1], limit=MAX_HEAD), CONNECT_TIMEOUT
        )
        return _Conn(reader, writer), False

    async def request(
        self, method: str, url: str, headers: RawHeaders, body: bytes
    ) -> UpstreamResponse:
        """Send the request and read the answer's head; raises :class:`UpstreamUnreachable`."""
        host, port, host_header, target = self._target(url)
        key = (host, port)
        head = [f"{method} {target} HTTP/1.1\r\n".encode("latin-1"), b"host: ", host_header]
        for name, value in headers:
            head += (b"\r\n", name, b": ", value)
        if body or method in ("POST", "PUT", "PATCH"):
            head += (b"\r\ncontent-length: ", str(len(body)).encode())
        head.append(b"\r\n\r\n")
        payload = b"".join(head) + body
        for attempt in (0, 1):
            conn: _Conn | None = None
            reused = False
            try:
                conn, reused = await self._connect(key)
                conn.writer.write(payload)
                await asyncio.wait_for(conn.writer.drain(), WRITE_TIMEOUT)
                return await self._head(conn, key, method)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as err:
                if conn is not None:
                    conn.close()
                # A kept-alive connection the server had just closed: try once on a new one.
                stale = isinstance(err, asyncio.IncompleteReadError | ConnectionError) and reused
                if attempt == 0 and stale:
                    continue
                detail = str(err) or "no answer"
                raise UpstreamUnreachable(f"{type(err).__name__}: {detail}") from err
        raise AssertionError("unreachable")

    async def _head(self, conn: _Conn, key: tuple[str, int], method: str) -> UpstreamResponse:
        while True:
            raw = await conn.reader.readuntil(b"\r\n\r\n")
            lines = raw[:-4].split(b"\r\n")
            parts = lines[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise ValueError(f"not an HTTP answer: {lines[0][:80]!r}")
            status = int(parts[1])
            if 100 <= status < 200 and status != 101:
                continue  # 100 Continue and other interim answers
            break
        headers: RawHeaders = []
        framing, length, close = "close", 0, parts[0] == b"HTTP/1.0"
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                continue
            value = value.strip()
            headers.append((name, value))
            lower = name.lower()
            if lower == b"transfer-encoding" and b"chunked" in value.lower():
                framing = "chunked"
            elif lower == b"content-length" and framing != "chunked":
                framing, length = "length", int(value)
            elif lower == b"connection":
                tokens = {t.strip().lower() for t in value.split(b",")}
                close = close and b"keep-alive" not in tokens or b"close" in tokens
        if method == "HEAD" or status in _NO_BODY_STATUS:
            framing = "none"
        # What arrived with the head stays in the reader: the body's first reads return it.
        response = UpstreamResponse(status, headers, conn, self, key, framing, length, not close)
        if framing == "none" or (framing == "length" and length == 0):
            response._done = True
        return response

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _ascii(host: str) -> bytes:
    try:
        return host.encode("ascii")
    except UnicodeEncodeError:
        name, sep, port = host.rpartition(":")
        if not sep or not port.isdigit():
            name, port = host, ""
        return name.encode("idna") + (f":{port}".encode() if port else b"")
