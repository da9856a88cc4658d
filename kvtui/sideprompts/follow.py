"""The interval trigger in the background: follow SillyTavern's live chat for side prompts.

:class:`LiveSidePrompts` is what the dashboard (a Textual worker) and ``kvtui proxy`` (an asyncio
task) run beside the chat-switch watcher: it watches the same SillyTavern data directory the
service follows (every write of the active chat), hands each change to an
:class:`~kvtui.sideprompts.interval.IntervalTrigger` (debounced, ``sideprompt_debounce_s``), and
runs due templates through the memory job runner with the service's routing gate, so a run never
costs a character its cache. Nobody is asked: a reply is saved as it comes (as with previews
off), and each run's start and outcome are lines in the service's event log.
``sideprompt_follow_chat = false`` (or no ``st_dir``) turns it off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from kvtui.events import Kind
from kvtui.memory.jobs import JobRunner
from kvtui.memory.settings import MemorySettings
from kvtui.service import KvService
from kvtui.sideprompts.interval import IntervalTrigger
from kvtui.sideprompts.runs import SideOutcome, SideRun
from kvtui.sideprompts.service import SidePromptService
from kvtui.sideprompts.settings import SidePromptSettings


def follows_live_chat(kv: KvService) -> bool:
    """Whether :meth:`LiveSidePrompts.run` has work to do for ``kv``'s settings."""
    if kv.st_data is None:
        return False
    return SidePromptSettings.from_settings(kv.settings).sideprompt_follow_chat


class LiveSidePrompts:
    """The interval trigger on ``kv``'s SillyTavern data directory, until stopped."""

    def __init__(
        self,
        kv: KvService,
        *,
        debounce: Callable[[], Awaitable[None]] | None = None,
        force_polling: bool | None = None,
    ) -> None:
        if kv.st_data is None:
            raise ValueError("side prompts follow a chat only with a SillyTavern directory")
        self.kv = kv
        settings = kv.settings
        self.runner = JobRunner(
            kv.client, MemorySettings.from_settings(settings), gate=kv.job_gate()
        )
        self.service = SidePromptService.from_settings(settings, self.runner, kv.st_data)
        if debounce is None:
            self.trigger = IntervalTrigger.from_settings(
                self.service, settings, on_outcome=self._log, on_start=self._started
            )
        else:
            self.trigger = IntervalTrigger(
                self.service, debounce=debounce, on_outcome=self._log, on_start=self._started
            )
        self.force_polling = force_polling

    def _started(self, run: SideRun) -> None:
        self.kv.events.info(
            Kind.SAVE,
            f"Side prompt (every {run.template.triggers.interval} messages) {run.template.name}: "
            f"running on {run.ref.display_name}, messages {run.scene.range_text}…",
        )

    def _log(self, outcome: SideOutcome) -> None:
        text = f"Side prompt (every {self._interval(outcome)} messages) {outcome.line}"
        if outcome.ok:
            self.kv.events.info(Kind.SAVE, text)
        else:
            self.kv.events.warning(Kind.ERROR, text)

    def _interval(self, outcome: SideOutcome) -> str:
        for template in self.trigger.templates():
            if template.name == outcome.template:
                return str(template.triggers.interval)
        return "N"

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the live chat until ``stop`` is set; pending runs are cancelled then (a
        cancelled job still puts any borrowed slot back)."""
        try:
            await self.trigger.watch(stop, force_polling=self.force_polling)
        finally:
            await self.runner.aclose()
