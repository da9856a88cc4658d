"""The proxy's half of recall's refresh (:mod:`kvtui.recall.refresh`): after a reply with recall
injected near the end, the character's slot is given, in the background, the prompt without
this turn's recall followed by the reply — what the next turn begins with.

It runs once the reply's bookkeeping is done, as a task of its own, under the lock kvtui's slot
operations take (routing, restores, evictions, loads): the refresh is sent only while the slot
is still the character's, and nothing can give the slot to someone else before it is through.
The client has its reply; a request that comes meanwhile waits for the refresh (llama-server
runs one task per slot, and routing waits for the lock), and a swipe of the same turn prefills
this turn's recall again. A failure is said in the event log and costs nothing but the refresh;
at shutdown refreshes still running after a few seconds are cancelled.
"""

from __future__ import annotations

import asyncio
import logging

from kvtui.events import Kind
from kvtui.proxy.gentype import request_prompt
from kvtui.proxy.recallturns import RecallTurns
from kvtui.recall import RecallOutcome
from kvtui.recall.refresh import Refresh, plan_refresh
from kvtui.service import KvService

log = logging.getLogger("kvtui.proxy")


class Refresher:
    """Runs the refreshes of one proxy; :meth:`drain` waits for those under way."""

    def __init__(self, service: KvService, turns: RecallTurns) -> None:
        self.service = service
        self.turns = turns
        self._tasks: set[asyncio.Task[None]] = set()

    def after_reply(
        self, chat: str, character: str, slot: int, outcome: RecallOutcome, reply: str
    ) -> asyncio.Task[None] | None:
        """Start the refresh for a reply that reached the client whole (``None``: none due)."""
        plan = plan_refresh(outcome, reply)
        if plan is None:
            return None
        task = asyncio.get_running_loop().create_task(self._run(chat, character, slot, plan))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self, timeout: float | None = None) -> None:  # noqa: ASYNC109 - a bound
        """Wait for the refreshes under way; after ``timeout`` seconds cancel the rest (a
        refresh is only ever an optimisation: closing its connection stops it)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while self._tasks:
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                for task in list(self._tasks):
                    task.cancel()
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
                return
            await asyncio.wait(set(self._tasks), timeout=left)

    async def _run(self, chat: str, character: str, slot: int, plan: Refresh) -> None:
        service = self.service
        key = (chat, character)
        expected = self.turns.last_sent(key)
        try:
            if plan.prompt is not None:
                prompt = plan.prompt
            else:
                prompt = await service.render_chat(plan.messages or [])
            # Under the lock slot operations take: no restore, eviction or load of this slot
            # can come between the check that it is still the character's and the refresh.
            async with service.job_gate():
                if service.resident_slot(chat, character) != slot:
                    return  # routed elsewhere since: that slot's cache is someone else's
                result = await service.complete(prompt, slot=slot, n_predict=1)
        except Exception as err:  # noqa: BLE001 - said; the next turn prefills instead
            service.events.warning(
                Kind.ROUTE,
                f"recall {character}: could not refresh slot {slot} after the reply "
                f"(the next turn prefills the reply again): {err}",
            )
            return
        written = (
            plan.prompt if plan.prompt is not None else request_prompt({"messages": plan.messages})
        )
        if written is not None:
            self.turns.refreshed(key, written, expected)
        t = result.timings
        line = (
            f"recall {character}: slot {slot} refreshed in the background without this "
            f"turn's recall · {t.prompt_n:,} tok prefilled ({t.cache_n:,} cached)"
        )
        log.info("%s", line)
        service.events.info(Kind.ROUTE, line)
