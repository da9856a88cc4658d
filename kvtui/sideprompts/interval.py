"""The interval trigger: run a template when enough visible messages arrived since its last run.

:meth:`IntervalTrigger.observe` looks at one chat: for every enabled template with an interval,
it counts the visible (non-system) messages after the template's checkpoint; at the threshold it
schedules one run, debounced (about 10 s by default; ``debounce`` is injectable so tests need not
wait), re-checked after the wait, on the messages since the checkpoint capped to the recent
window. A (template, chat) pair has at most one run pending, so a threshold fires once; the run
moves the checkpoint, so the next fires only at the next threshold. :meth:`IntervalTrigger.watch`
follows the live chat through SillyTavern's data directory (every write of the active chat);
:mod:`kvtui.sideprompts.follow` runs it in the background of the dashboard and ``kvtui proxy``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kvtui.sideprompts.runs import FAILURES, Decide, SideOutcome, SideRun
from kvtui.sideprompts.service import SidePromptService
from kvtui.sideprompts.templates import SidePrompt
from kvtui.sillytavern import ChatRef

log = logging.getLogger(__name__)

DEBOUNCE_S = 10.0


async def _ten_seconds() -> None:
    await asyncio.sleep(DEBOUNCE_S)


class IntervalTrigger:
    def __init__(
        self,
        service: SidePromptService,
        *,
        debounce: Callable[[], Awaitable[None]] = _ten_seconds,
        decide: Decide | None = None,
        on_outcome: Callable[[SideOutcome], None] | None = None,
        on_start: Callable[[SideRun], None] | None = None,
    ) -> None:
        self.service = service
        self.debounce = debounce
        self.decide = decide
        self.on_outcome = on_outcome
        self.on_start = on_start
        self.outcomes: list[SideOutcome] = []
        self.observations = 0
        """How many looks at a chat finished (tests wait on it instead of sleeping)."""
        self.seen: dict[str, int] = {}
        """The message count of each chat at its last look."""
        self._pending: dict[tuple[str, str], asyncio.Task[None]] = {}

    @classmethod
    def from_settings(
        cls, service: SidePromptService, settings: Any, **kwargs: Any
    ) -> IntervalTrigger:
        """A trigger debounced by ``sideprompt_debounce_s`` of a ``Settings``."""
        from kvtui.sideprompts.settings import SidePromptSettings

        seconds = SidePromptSettings.from_settings(settings).sideprompt_debounce_s

        async def wait() -> None:
            await asyncio.sleep(seconds)

        return cls(service, debounce=wait, **kwargs)

    def templates(self) -> list[SidePrompt]:
        return [t for t in self.service.library.all() if t.enabled and t.triggers.interval]

    def due(self, chat_id: str) -> list[SidePrompt]:
        """The interval templates whose threshold ``chat_id`` has reached."""
        ref = self.service.find_chat(chat_id)
        chat = self.service.read_chat(ref)
        self.seen[chat_id] = len(chat.messages)
        found = []
        for template in self.templates():
            last = self.service.baseline(chat, template)
            if self.service.visible_since(chat, last) >= (template.triggers.interval or 0):
                found.append(template)
        return found

    async def observe(self, chat_id: str) -> int:
        """Schedule the runs ``chat_id`` is due for; returns how many were newly scheduled."""
        try:
            due = await asyncio.to_thread(self.due, chat_id)
        except FAILURES as err:
            log.info("Side prompts: cannot check %s: %s", chat_id, err)
            self.observations += 1
            return 0
        scheduled = 0
        for template in due:
            key = (chat_id, template.key)
            if key in self._pending:
                continue
            self._pending[key] = asyncio.create_task(self._fire(chat_id, template.name, key))
            scheduled += 1
        self.observations += 1
        return scheduled

    async def _fire(self, chat_id: str, name: str, key: tuple[str, str]) -> None:
        try:
            await self.debounce()
            template = next((t for t in await asyncio.to_thread(self.due, chat_id)
                             if t.key == key[1]), None)  # fmt: skip
            if template is None:
                return  # edited, disabled or no longer due after the wait
            try:
                run = await asyncio.to_thread(self.service.plan, template, chat_id)
            except FAILURES as err:
                outcome = SideOutcome(name, chat_id, "failed", message=str(err))
            else:
                if self.on_start is not None:
                    self.on_start(run)
                outcome = await self.service.execute(run, self.decide, advance_on_cancel=True)
            self.outcomes.append(outcome)
            if self.on_outcome is not None:
                self.on_outcome(outcome)
        except FAILURES as err:
            log.info("Side prompt %s on %s failed: %s", name, chat_id, err)
        finally:
            self._pending.pop(key, None)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def drain(self) -> None:
        """Wait for every scheduled run to finish."""
        while self._pending:
            await asyncio.gather(*list(self._pending.values()), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        await asyncio.gather(*list(self._pending.values()), return_exceptions=True)
        self._pending.clear()

    async def watch(self, stop_event: asyncio.Event, *, force_polling: bool | None = None) -> None:
        """Follow the active chat in SillyTavern's data directory until ``stop_event``."""
        data = self.service.st_data
        active = await asyncio.to_thread(data.active_chat)
        if active is not None:
            await self.observe(active.chat_id)

        async def changed(ref: ChatRef) -> None:
            await self.observe(ref.chat_id)

        try:
            await data.watch_active(
                changed, stop_event, every_write=True, force_polling=force_polling
            )
        finally:
            await self.aclose()
