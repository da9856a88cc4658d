"""Watching a reply pass through: what the bookkeeping needs, without touching a byte.

For Server-Sent Events the observer splits the stream into events and keeps the last JSON event
that carries ``timings`` (llama-server's final event) and the generated text; for a plain reply
it keeps the body (bounded) and parses it at the end.

The stream is the hot path (one event per token): an event is only looked at as bytes there. The
final event (it carries ``"timings":`` or ``"stop":true``, which an escaped string cannot) is
parsed at once; the others are kept as bytes and parsed together, in one ``json.loads``, only
when the reply's text is asked for.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

MAX_JSON_BODY = 64 * 1024 * 1024
"""A plain reply bigger than this is passed on but not parsed."""
_FINAL_TIMINGS = b'"timings":'
_FINAL_STOP = b'"stop":true'


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
        self._deferred: list[bytes] = []  # events' data not parsed yet (text only)
        self._deferred_size = 0

    def _ending(self) -> None:
        if self._on_end is not None:
            callback, self._on_end = self._on_end, None
            callback()

    def feed(self, chunk: bytes) -> None:
        if not self.streaming:
            self._ending()
            if len(self._buffer) + len(chunk) > MAX_JSON_BODY:
                self._overflow = True
            else:
                self._buffer += chunk
            return
        buffer = self._buffer
        buffer += chunk.replace(b"\r\n", b"\n") if b"\r" in chunk else chunk
        start = 0
        while (end := buffer.find(b"\n\n", start)) >= 0:
            event = bytes(buffer[start:end])
            start = end + 2
            if _FINAL_TIMINGS in event or _FINAL_STOP in event:
                self._event(event)
            elif event.startswith(b"data: ") and b"\n" not in event:
                if event != b"data: [DONE]":
                    self._defer(event[6:])  # llama-server's shape: one data line
            else:
                self._event(event, defer=True)
        if start:
            del buffer[:start]

    def _defer(self, data: bytes) -> None:
        self._deferred.append(data)
        self._deferred_size += len(data)
        if self._deferred_size > MAX_JSON_BODY:  # a huge reply: parse what is kept so far
            self._parse_deferred()

    def _event(self, event: bytes, *, defer: bool = False) -> None:
        data = b"\n".join(
            line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
        )
        if not data or data.strip() == b"[DONE]":
            return
        if defer:
            self._defer(data)
            return
        self._parse_deferred()  # text stays in order
        try:
            obj = json.loads(data)
        except ValueError:
            return
        if isinstance(obj, dict):
            self._take(obj)

    def _parse_deferred(self) -> None:
        """Take the text of the events kept as bytes: one ``json.loads`` for all of them."""
        pending, self._deferred, self._deferred_size = self._deferred, [], 0
        if not pending:
            return
        try:
            objs = json.loads(b"[" + b",".join(pending) + b"]")
        except ValueError:  # one bad event: each on its own, skipping what is not JSON
            objs = []
            for data in pending:
                if data.strip() == b"[DONE]":
                    continue
                try:
                    objs.append(json.loads(data))
                except ValueError:
                    continue
        for obj in objs:
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
            self._parse_deferred()
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
        self._parse_deferred()
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
