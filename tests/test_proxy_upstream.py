"""The relay's lean HTTP/1.1 client (:mod:`kvtui.proxy.upstream`) and the SSE observer's byte
scanning.

llama-server's own answers (streamed and plain, through the whole proxy) are covered by
``test_proxy.py``; here a small socket server sends the framings a real llama-server never
produces on cue: a chunk cut across reads, trailers, an interim ``100 Continue``, a body that
ends with the connection, a kept-alive connection the server has closed, a cut-off stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.proxy.observer import ReplyObserver
from kvtui.proxy.upstream import UpstreamBroke, UpstreamPool, UpstreamUnreachable, supports

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def serving(answer: Answer) -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await answer(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


async def body_of(pool: UpstreamPool, url: str, body: bytes = b"{}") -> tuple[int, bytes]:
    response = await pool.request("POST", url, [(b"content-type", b"application/json")], body)
    try:
        return response.status, b"".join([piece async for piece in response.body()])
    finally:
        await response.aclose()


async def test_chunks_cut_across_reads_and_trailers_come_out_whole() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        parts = [
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n6;ext=1\r\n world\r\n",
            b"0\r\nX-Trailer: yes\r\n\r\n",
        ]
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0)

    async with serving(answer) as url:
        pool = UpstreamPool()
        assert await body_of(pool, url + "/completion") == (200, b"hello world")
        await pool.aclose()


async def test_interim_answers_are_skipped_and_a_close_delimited_body_is_read_to_the_end() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nall of it")
        await writer.drain()

    async with serving(answer) as url:
        pool = UpstreamPool()
        response = await pool.request("POST", url, [], b"{}")
        assert response.status == 200 and response.header(b"x-a") == "1"
        assert b"".join([p async for p in response.body()]) == b"all of it"
        await response.aclose()
        await pool.aclose()


async def test_a_kept_alive_connection_the_server_closed_is_replaced() -> None:
    served = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        _head, body = await read_request(reader)
        served += 1
        payload = b'{"n": %d, "echo": %s}' % (served, body)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
        await writer.drain()
        # ... and the server closes the connection although it did not say so.

    async with serving(answer) as url:
        pool = UpstreamPool()
        first = await body_of(pool, url + "/a", b'"one"')
        second = await body_of(pool, url + "/b", b'"two"')
        assert json.loads(first[1]) == {"n": 1, "echo": "one"}
        assert json.loads(second[1]) == {"n": 2, "echo": "two"}
        await pool.aclose()


async def test_a_cut_off_body_raises_broke_and_no_server_raises_unreachable() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()

    async with serving(answer) as url:
        pool = UpstreamPool()
        response = await pool.request("POST", url, [], b"{}")
        with pytest.raises(UpstreamBroke):
            async for _ in response.body():
                pass
        await response.aclose()
    with pytest.raises(UpstreamUnreachable):
        await pool.request("GET", url, [], b"")
    await pool.aclose()
    assert supports(url) and not supports("https://example.org") and not supports("http://")


async def test_a_real_stream_through_the_pool_matches_the_servers_bytes_and_is_observed(
    clean_server: EmbeddedServer,
) -> None:
    body = {"prompt": "Once upon a time", "n_predict": 24, "stream": True, "ignore_eos": True}
    pool = UpstreamPool()
    observer = ReplyObserver(streaming=True)
    response = await pool.request(
        "POST", clean_server.url + "/completion", [], json.dumps(body).encode()
    )
    pieces = [piece async for piece in response.body()]
    await response.aclose()
    for piece in pieces:
        observer.feed(piece)
    observer.finish()
    events = [json.loads(e[6:]) for e in b"".join(pieces).split(b"\n\n") if e.startswith(b"data:")]
    assert observer.final is not None and observer.final["timings"]["predicted_n"] == 24
    assert observer.text == "".join(e["content"] for e in events)
    # The connection went back to the pool and serves the next request.
    assert pool.kept_alive(clean_server.url, 0.0)
    status, plain = await body_of(pool, clean_server.url + "/tokenize", b'{"content": "hi"}')
    assert status == 200 and "tokens" in json.loads(plain)
    await pool.aclose()


def test_the_observer_keeps_text_in_order_across_events_split_anywhere() -> None:
    events = [{"content": f"w{i} ", "stop": False} for i in range(5)]
    events.append({"content": "", "stop": True, "timings": {"prompt_n": 3, "cache_n": 2}})
    stream = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    stream += b"data: [DONE]\n\n"
    for cut in (1, 7, 40, len(stream) - 3):
        observer, ended = _observed(stream, cut)
        assert ended == ["w0 w1 w2 w3 w4 "]  # on_end came with the final event, text complete
        assert observer.final is not None and observer.final["timings"]["cache_n"] == 2
        assert observer.text == "w0 w1 w2 w3 w4 "


def _observed(stream: bytes, cut: int) -> tuple[ReplyObserver, list[str]]:
    ended: list[str] = []
    observer = ReplyObserver(streaming=True, on_end=lambda: ended.append(observer.text))
    observer.feed(stream[:cut])
    observer.feed(stream[cut:])
    observer.finish()
    return observer, ended


def test_an_event_that_is_not_json_is_skipped_without_losing_the_others() -> None:
    observer = ReplyObserver(streaming=True)
    observer.feed(b'data: {"content": "a"}\n\ndata: {broken\n\ndata: {"content": "b"}\n\n')
    observer.feed(b'event: x\ndata: {"content": "c"}\n\n')
    observer.finish()
    assert observer.text == "abc" and observer.final is None
