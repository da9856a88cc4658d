"""Following SillyTavern's active chat: keep kvtui's current chat in step with the user's.

SillyTavern writes the chat file the user is in (the user's message is saved before the request
is sent), so the most recently written chat file is the active chat. When it becomes a different
chat, kvtui does the seed's chat switch: save every character used at least once, erase all
slots, and place the new chat's unmuted characters (their caches are restored on their first
generation). The proxy asks the same follower before routing a request, so a switch happens
exactly once, whichever of the two notices it first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

from kvtui.events import Kind
from kvtui.llama import LlamaError
from kvtui.service.core import ServiceCore
from kvtui.service.outcomes import ChatContext, SaveOutcome, ServiceError
from kvtui.sillytavern import ChatRef, Member, SillyTavernData

SwitchChat = Callable[[str, Sequence[str]], Awaitable[list[SaveOutcome]]]


_JUST_SENT = 60.0
"""Seconds within which a user line at the end of a chat file counts as just sent."""


class ChatFollower:
    """Switches kvtui's chat when SillyTavern's active chat changes."""

    def __init__(self, core: ServiceCore, st_data: SillyTavernData, switch: SwitchChat) -> None:
        self.core = core
        self.st_data = st_data
        self._switch = switch
        self._lock = asyncio.Lock()
        self._members: dict[str, list[Member]] = {}

    async def active(self) -> ChatRef | None:
        """SillyTavern's active chat (read off the event loop: it stats every chat file)."""
        return await asyncio.to_thread(self.st_data.active_chat)

    async def members(self, ref: ChatRef) -> list[Member]:
        members = await asyncio.to_thread(self.st_data.members, ref)
        self._members[ref.chat_id] = members
        return members

    async def adopt_current(self) -> ChatRef | None:
        """At start: take SillyTavern's active chat as kvtui's current chat, without a switch.

        Slots keep what they hold (a restarted kvtui must not erase live caches); when kvtui
        already has a current chat that differs, the switch runs as usual.
        """
        ref = await self.active()
        if ref is None:
            return None
        async with self._lock:
            if self.core.current_chat is None:
                self.core.current_chat = ref.chat_id
                await self.members(ref)
                self.core.events.info(
                    Kind.CHAT_SWITCH, f"Current chat: {ref.display_name} ({ref.chat_id})."
                )
                return ref
        await self.ensure(ref)
        return ref

    async def ensure(self, ref: ChatRef | None = None) -> bool:
        """Switch to ``ref`` (default: the active chat) unless it is already current.

        Returns True when a switch ran. Failures are logged to the event log, never raised:
        a request that triggered the check still goes through.
        """
        if ref is None:
            ref = await self.active()
            if ref is None:
                return False
        async with self._lock:
            if self.core.current_chat == ref.chat_id:
                return False
            members = await self.members(ref)
            names = [m.name for m in members if not m.muted]
            try:
                await self._switch(ref.chat_id, names)
            except (ServiceError, LlamaError) as err:
                # switch_chat sets the current chat first, so it is not retried on every request.
                self.core.events.error(
                    Kind.CHAT_SWITCH, f"Chat switch to {ref.display_name} failed: {err}"
                )
            return True

    def cached_members(self, chat_id: str) -> list[Member] | None:
        """The members last read for ``chat_id`` (the proxy's identity inference uses them)."""
        return self._members.get(chat_id)

    async def context(self) -> ChatContext:
        """The active chat (switching to it first), its members and the user's name.

        Never raises: a damaged data directory must not block generations (it is logged).
        """
        current = self.core.current_chat
        try:
            # One trip to a worker thread for all three reads (this runs before every request).
            ref, members, user = await asyncio.to_thread(self._read_context)
            if ref is None or members is None:
                return ChatContext(current)
            self._members[ref.chat_id] = members
            await self.ensure(ref)
            return ChatContext(ref.chat_id, tuple(m.name for m in members), (user,))
        except Exception as err:  # noqa: BLE001 - any failure reading ST's files is logged
            self.core.events.error(
                Kind.CHAT_SWITCH, f"Could not read SillyTavern's active chat: {err!r}"
            )
            return ChatContext(current)

    async def _on_change(self, ref: ChatRef) -> None:
        """A chat file was written: a switch only when the user has just *sent* there.

        SillyTavern also rewrites the chat being *left* when another is opened, so "the newest
        file" alone points back at the old chat. A fresh user message at the end is the sign
        of a send; every other switch happens when a request shows (or the companion extension
        says) which chat is open.
        """
        if await asyncio.to_thread(self._user_just_sent, ref):
            await self.ensure(ref)
        else:
            await self.members(ref)

    def _user_just_sent(self, ref: ChatRef) -> bool:
        try:
            messages = self.st_data.read_chat(ref).messages
        except (OSError, ValueError):
            return False
        if not messages or not messages[-1].is_user:
            return False
        sent = messages[-1].send_date
        return sent is None or abs((datetime.now(UTC) - sent).total_seconds()) < _JUST_SENT

    def _read_context(self) -> tuple[ChatRef | None, list[Member] | None, str]:
        """The active chat, its members (cached per chat) and the user's name (in a thread)."""
        ref = self.st_data.active_chat()
        if ref is None:
            return None, None, ""
        members = self._members.get(ref.chat_id)
        if members is None:
            members = self.st_data.members(ref)
        return ref, members, self.st_data.user_name()

    async def run(self, stop_event: asyncio.Event) -> None:
        """Watch SillyTavern's data directory until ``stop_event`` is set."""
        try:
            await self.adopt_current()
        except (ServiceError, LlamaError) as err:
            self.core.events.error(Kind.CHAT_SWITCH, f"Could not read the current chat: {err}")
        await self.st_data.watch_active(self._on_change, stop_event)
