"""The Memory screen's after-memory batch: side prompts on the scene just memorised.

Once a memory is saved, every enabled template with the after-memory trigger runs on that scene
(:meth:`kvtui.sideprompts.service.SidePromptService.run_after_memory`: a small concurrency limit,
the jobs one at a time) through the Memory screen's own job runner, so the same slot rules hold
and no character loses its cache. Each run's success or failure is a notification and a line in
the event log. With ``sideprompt_previews`` on, each reply opens in the shared free-text preview
(one at a time); off, replies are saved as they come. ``service_gate`` is the routing lock the
screen's job runner holds while it borrows a slot.
"""

from __future__ import annotations

import asyncio
from typing import Any

from textual.screen import Screen

from kvtui.events import Kind
from kvtui.memory.jobs import Gate, JobRunner
from kvtui.memory.preview import TextPreview
from kvtui.memory.settings import MemorySettings
from kvtui.service import KvService
from kvtui.sideprompts.runs import FAILURES, SideOutcome, SideRun
from kvtui.sideprompts.service import SidePromptService
from kvtui.sideprompts.settings import SidePromptSettings
from kvtui.sillytavern import SillyTavernData
from kvtui.tui.screens.text_preview import decide


class AfterMemory:
    """Runs the after-memory side prompts for a screen of ``kv``'s dashboard."""

    def __init__(
        self,
        kv: KvService,
        runner: JobRunner,
        st_data: SillyTavernData,
        settings: MemorySettings,
        *,
        previews: bool | None = None,
    ) -> None:
        self.kv = kv
        sp = SidePromptSettings.from_settings(kv.settings)
        self.service = SidePromptService(
            st_data, kv.settings.state_dir, settings, runner,
            concurrency=sp.sideprompt_concurrency, window=sp.sideprompt_window,
        )  # fmt: skip
        self.previews = sp.sideprompt_previews if previews is None else previews
        self.outcomes: list[SideOutcome] = []
        self._asking = asyncio.Lock()

    def templates(self) -> list[str]:
        try:
            return [t.name for t in self.service.after_memory_templates()]
        except FAILURES:
            return []

    async def run(self, screen: Screen[Any], chat_id: str, start: int, end: int) -> str:
        """The batch on ``chat_id``'s messages ``start``-``end``; each run is reported on
        ``screen`` as it ends. Returns the batch's summary line."""

        async def choose(run: SideRun, preview: TextPreview) -> None:
            async def again(p: TextPreview) -> None:
                await self.service.regenerate(run, p)

            title = f"Side prompt {run.template.name}: messages {start}-{end}"
            await decide(screen.app, title, preview, again, self._asking)

        def report(outcome: SideOutcome) -> None:
            self.outcomes.append(outcome)
            text = f"After memory: {outcome.line}"
            if outcome.status == "failed":
                self.kv.events.warning(Kind.ERROR, text)
                screen.notify(
                    outcome.line, title="Side prompt failed", severity="error", markup=False
                )
            else:
                self.kv.events.info(Kind.SAVE, text)
                screen.notify(outcome.line, title="Side prompt", markup=False)

        batch = await self.service.run_after_memory(
            chat_id, start, end, choose if self.previews else None, report
        )
        counts = {s: sum(1 for o in batch if o.status == s) for s in ("saved", "failed")}
        cancelled = len(batch) - counts["saved"] - counts["failed"]
        extra = f", {cancelled} cancelled" if cancelled else ""
        return f"Side prompts: {counts['saved']} updated, {counts['failed']} failed{extra}."


def service_gate(service: object) -> Gate | None:
    """The service's routing lock for borrowed-slot jobs: ``job_gate()`` when the service
    offers one, else its ``lock``; None when it has neither (then pass a ``runner``)."""
    job_gate = getattr(service, "job_gate", None)
    if callable(job_gate):
        gate: Gate = job_gate()
        return gate
    lock = getattr(service, "lock", None)
    return lock if isinstance(lock, asyncio.Lock) else None
