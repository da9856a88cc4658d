"""The companion extension's door: ``/kvtui/v1/…`` on the proxy, answered by kvtui itself.

The SillyTavern extension shipped in ``kvtui/sillytavern/extension`` talks to these from the
user's browser (the proxy's door policy has already let only allowed pages through):

* ``POST /kvtui/v1/event`` — a chat was opened, or a message edited, deleted or swiped. An open
  switches kvtui's current chat at once (SillyTavern writes no file when a chat is opened, so
  this is the only exact signal); the others are noted for the next request's classification
  and handed to every listener (:meth:`Companion.listen`: recall drops the cached recall of an
  edited or deleted message's chat and character).
* ``GET /kvtui/v1/status?chat=&character=`` — connected, the character's slot, its last turn.
* ``POST /kvtui/v1/save`` — "save now" / "save with tag" for the character of the open chat.

Bodies may come as ``text/plain`` (a CORS "simple" request needs no preflight).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from kvtui.errors import KvtuiError
from kvtui.events import Kind
from kvtui.proxy.asgi import Scope, Send, send_error, send_json
from kvtui.proxy.guard import Refusal, parse_json_object
from kvtui.service import ConnectionState, KvService

PREFIX = "/kvtui/v1/"
EVENT_TYPES = frozenset({"chat_opened", "message_edited", "message_deleted", "message_swiped"})


@dataclass(frozen=True)
class ChatEvent:
    """One event the extension reported, as the router keeps it for the next request."""

    type: str
    chat: str
    group: str | None
    avatar: str | None
    character: str | None
    message_index: int | None


Listener = Callable[[ChatEvent], None]
"""Called with each event the extension reports (after it is noted); must not block."""

LastTurn = tuple[int, int]
"""(prompt_n, cache_n) of a character's last turn."""


class Companion:
    """Answers the extension's requests for one service; keeps the latest event per chat."""

    def __init__(self, service: KvService) -> None:
        self.service = service
        self.events: dict[str, ChatEvent] = {}
        self.last_turns: dict[tuple[str, str], LastTurn] = {}
        self._listeners: list[Listener] = []

    def listen(self, listener: Listener) -> None:
        """Call ``listener`` with every event the extension reports from now on."""
        self._listeners.append(listener)

    def note_turn(self, chat: str, character: str, prompt_n: int, cache_n: int) -> None:
        """The router tells the status panel how a character's last turn went."""
        self.last_turns[(chat, character)] = (prompt_n, cache_n)

    def take_event(self, chat: str) -> ChatEvent | None:
        """The last edit/delete/swipe reported for ``chat`` (once), for classification."""
        event = self.events.get(chat)
        if event is not None and event.type != "chat_opened":
            del self.events[chat]
            return event
        return None

    async def handle(self, scope: Scope, send: Send, body: bytes) -> None:
        method, path = str(scope["method"]), str(scope["path"])
        name = path.removeprefix(PREFIX)
        if method == "GET" and name == "status":
            await send_json(send, 200, self._status(scope))
            return
        if method != "POST" or name not in ("event", "save"):
            await send_error(
                send, 404, f"kvtui proxy: no companion endpoint {method} {path}.", "not_found"
            )
            return
        data = parse_json_object(body, path)
        if isinstance(data, Refusal):
            await send_error(send, data.status, data.message, data.kind)
            return
        if name == "event":
            problem = await self._event(data)
            if problem is not None:
                await send_error(send, 400, f"kvtui proxy: {problem}", "invalid_request_error")
                return
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        status, payload = await self._save(data)
        await send_json(send, status, payload)

    async def _event(self, data: dict[str, Any]) -> str | None:
        kind, chat = data.get("type"), data.get("chat")
        if kind not in EVENT_TYPES:
            return f"unknown event type {kind!r}; one of {', '.join(sorted(EVENT_TYPES))}."
        if not isinstance(chat, str) or not chat:
            return 'the event needs "chat": the SillyTavern chat id.'
        index = data.get("message_index")
        event = ChatEvent(
            type=str(kind),
            chat=chat,
            group=_text(data.get("group")),
            avatar=_text(data.get("avatar")),
            character=_text(data.get("character")),
            message_index=index if isinstance(index, int) and not isinstance(index, bool) else None,
        )
        self.events[chat] = event
        if event.type == "chat_opened":
            await self.service.chat_opened(chat)
        else:
            self.service.events.info(
                Kind.ROUTE, f"SillyTavern: {event.type.replace('_', ' ')} in {chat}."
            )
        for listener in self._listeners:
            try:
                listener(event)
            except Exception as err:  # noqa: BLE001 - a listener never fails the event
                self.service.events.error(Kind.ERROR, f"Handling {event.type} failed: {err!r}")
        return None

    def _status(self, scope: Scope) -> bytes:
        raw = scope.get("query_string", b"")
        query = parse_qs(raw.decode("latin-1") if isinstance(raw, bytes) else str(raw))
        chat = (query.get("chat") or [""])[0]
        character = (query.get("character") or [""])[0]
        slot = self.service.resident_slot(chat, character) if chat and character else None
        turn = self.last_turns.get((chat, character))
        answer = {
            "connected": self.service.state is ConnectionState.CONNECTED,
            "slot": slot,
            "last_turn": {"prompt_n": turn[0], "cache_n": turn[1]} if turn else None,
        }
        return json.dumps(answer).encode()

    async def _save(self, data: dict[str, Any]) -> tuple[int, bytes]:
        chat, character, tag = data.get("chat"), data.get("character"), _text(data.get("tag"))
        if not isinstance(chat, str) or not isinstance(character, str):
            return _problem(400, 'give "chat" and "character" (SillyTavern\'s chat id and name)')
        slot = self.service.resident_slot(chat, character)
        if slot is None:
            return _problem(
                409, f"{character} has no slot in kvtui yet: send a message first, then save"
            )
        try:
            outcome = await self.service.save_slot(slot, tag=tag or None)
        except (KvtuiError, OSError) as err:
            return _problem(400, str(err))
        answer = {
            "filename": outcome.filename,
            "slot": outcome.slot,
            "n_saved": outcome.n_saved,
            "tag": outcome.tag,
            "unchanged": outcome.unchanged,
        }
        return 200, json.dumps(answer, ensure_ascii=False).encode()


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _problem(status: int, message: str) -> tuple[int, bytes]:
    body = {"error": {"code": status, "message": f"kvtui: {message}.", "type": "kvtui_error"}}
    return status, json.dumps(body, ensure_ascii=False).encode()
