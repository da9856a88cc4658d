"""Running side prompts: the KV-safe job, the preview, the tracker entry, and the triggers' runs.

:class:`SidePromptService` (a :class:`~kvtui.sideprompts.planner.SidePromptPlanner` that also
runs) is shared by the CLI, the dashboard screens, the interval trigger and the after-memory
batch. Every generation goes through the memory job runner (:class:`kvtui.memory.jobs.JobRunner`:
utility slot, a borrowed slot parked and restored under the routing gate, or a second server —
a template's own ``server_url`` is that mode, see :mod:`kvtui.sideprompts.override`), and
through one lock of this service, so a batch never runs two jobs at once and no character loses
its cache. The entry is found by its title and its content replaced, or created with the
template's lorebook settings, in the chat's kvtui book; nothing is written before a preview is
accepted. A template's checkpoint advances when its run is saved or declined by the interval
trigger's preview, never on a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx

from kvtui.llama.errors import ServerUnreachable
from kvtui.memory.jobs import JobRunner, OnProgress
from kvtui.memory.lorebook import Lorebook, binding_hint
from kvtui.memory.preview import PreviewError, PreviewState, TextPreview
from kvtui.memory.scene import SceneError
from kvtui.memory.settings import MemorySettings
from kvtui.sideprompts.override import override_runner
from kvtui.sideprompts.planner import RECENT_WINDOW, SidePromptPlanner
from kvtui.sideprompts.runs import FAILURES, Decide, SideOutcome, SidePromptRefused, SideRun
from kvtui.sideprompts.templates import KIND, SidePrompt
from kvtui.sillytavern import SillyTavernData

__all__ = [
    "FAILURES",
    "RECENT_WINDOW",
    "Decide",
    "SideOutcome",
    "SidePromptRefused",
    "SidePromptService",
    "SideRun",
]

_BOOK_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def _book_lock(path: Path) -> threading.Lock:
    """One lock per book file, so concurrent upserts never lose each other's entries."""
    with _LOCKS_LOCK:
        return _BOOK_LOCKS.setdefault(path.resolve(), threading.Lock())


class SidePromptService(SidePromptPlanner):
    def __init__(
        self,
        st_data: SillyTavernData,
        state_dir: Path,
        settings: MemorySettings,
        runner: JobRunner,
        *,
        worlds: Path | None = None,
        concurrency: int = 2,
        window: int = RECENT_WINDOW,
    ) -> None:
        super().__init__(st_data, state_dir, settings, worlds=worlds, window=window)
        self.runner = runner
        self.concurrency = max(1, concurrency)
        self.override_transport: httpx.AsyncBaseTransport | None = None
        """How a template's own server is reached (None: the network; tests record)."""
        self._jobs = asyncio.Lock()

    @classmethod
    def from_settings(
        cls, settings: Any, runner: JobRunner, st_data: SillyTavernData | None = None
    ) -> SidePromptService:
        """The service for a ``kvtui.settings.Settings`` (``st_dir`` must be set) and the
        memory job runner (the one with the service's routing gate and ``busy``)."""
        from kvtui.sideprompts.settings import SidePromptSettings

        if st_data is None:
            if settings.st_dir is None:
                raise SceneError("Side prompts read SillyTavern chats: set st_dir (or --st-dir).")
            st_data = SillyTavernData(settings.st_dir)
        sp = SidePromptSettings.from_settings(settings)
        return cls(
            st_data,
            settings.state_dir,
            MemorySettings.from_settings(settings),
            runner,
            concurrency=sp.sideprompt_concurrency,
            window=sp.sideprompt_window,
        )

    # -- running -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _runner(self, template: SidePrompt) -> AsyncIterator[JobRunner]:
        if template.server_url is None:
            yield self.runner
            return
        runner = override_runner(self.runner, self.settings, template, self.override_transport)
        async with runner:
            yield runner

    async def generate(self, run: SideRun, on_progress: OnProgress | None = None) -> TextPreview:
        preview = TextPreview()
        await self.regenerate(run, preview, on_progress)
        return preview

    async def regenerate(
        self, run: SideRun, preview: TextPreview, on_progress: OnProgress | None = None
    ) -> None:
        """Fill ``preview`` (``WAITING``) with a new reply; one job at a time per service.

        A connection that broke before any answer (a kept-alive connection the server had just
        closed) is retried once; the runner has put the slots back by then.
        """
        async with self._jobs, self._runner(run.template) as runner:
            for attempt in (1, 2):
                try:
                    result = await runner.run(
                        run.prompt.text, n_predict=run.template.n_predict, on_progress=on_progress
                    )
                    break
                except ServerUnreachable as err:
                    if attempt == 2 or "broke during" not in str(err):
                        raise
        preview.offer(result.content, stop_type=result.stop_type, truncated=result.truncated)
        preview.slot, preview.mode = result.slot, result.mode

    async def save(self, run: SideRun, preview: TextPreview) -> dict[str, object]:
        """Write an accepted preview's text into the tracker entry; anything else writes nothing."""
        text = preview.accepted
        if text is None:
            raise PreviewError(f"The preview is {preview.state.value}: nothing to save.")
        return await asyncio.to_thread(self._save, run, text)

    def _save(self, run: SideRun, text: str) -> dict[str, object]:
        with _book_lock(run.book_path):  # a batch's saves re-read and replace the same file
            book = Lorebook.open(run.book_path, run.ref.chat_id)
            entry = book.upsert_by_title(
                run.template.title,
                text,
                run.template.lore.entry_settings(),
                kind=KIND,
                scene=(run.scene.start, run.scene.end),
                extra={"kvtui_sideprompt": run.template.name},
            )
        self.advance(run)
        return entry

    async def execute(
        self,
        run: SideRun,
        decide: Decide | None = None,
        on_progress: OnProgress | None = None,
        *,
        advance_on_cancel: bool = False,
    ) -> SideOutcome:
        """Generate, let ``decide`` drive the preview (None: accept), save; never raises for a
        failure a user can hit (the outcome says what went wrong). ``advance_on_cancel``: a
        declined run still moves the checkpoint (the interval trigger, so it fires once)."""
        base = SideOutcome(run.template.name, run.ref.chat_id, "failed", run.scene.start,
                           run.scene.end)  # fmt: skip
        try:
            preview = await self.generate(run, on_progress)
            if decide is not None:
                await decide(run, preview)
            elif preview.state is PreviewState.READY:
                preview.accept()
            if preview.state is PreviewState.CANCELLED:
                if advance_on_cancel:
                    await asyncio.to_thread(self.advance, run)
                return replace(base, status="cancelled", message="Cancelled; nothing was saved.")
            if preview.state is not PreviewState.ACCEPTED:
                return replace(base, message=preview.error or "The reply was not accepted.")
            entry = await self.save(run, preview)
        except FAILURES as err:
            return replace(base, message=str(err))
        uid = entry.get("uid")
        return replace(
            base,
            status="saved",
            text=preview.text,
            uid=uid if isinstance(uid, int) else None,
            slot=preview.slot,
            mode=preview.mode,
            message=f'Updated "{run.template.title}" in {run.book_name}.',
            hint=binding_hint(run.book_name, run.book_path, in_st=self.in_st),
        )

    # -- triggers ----------------------------------------------------------------------------

    async def run_manual(
        self,
        name: str,
        chat_id: str,
        range_text: str | None = None,
        decide: Decide | None = None,
        on_progress: OnProgress | None = None,
    ) -> SideOutcome:
        """``kvtui sideprompt NAME [X-Y]``; raises ``SidePromptRefused`` for a template without
        manual runs, ``SceneError``/``LibraryError``/``BookError`` for a run that cannot be
        planned."""
        template = self.library.get(name)
        if not template.triggers.manual:
            raise SidePromptRefused(
                f'"{template.name}" does not allow manual runs; turn on its manual trigger '
                f'(kvtui sideprompt edit "{template.name}" --manual on) to run it by hand.'
            )
        run = self.plan(template, chat_id, range_text)
        return await self.execute(run, decide, on_progress)

    def after_memory_templates(self) -> list[SidePrompt]:
        """The templates an after-memory batch runs: enabled, with the after-memory trigger."""
        return [t for t in self.library.all() if t.enabled and t.triggers.after_memory]

    async def run_after_memory(
        self,
        chat_id: str,
        start: int,
        end: int,
        decide: Decide | None = None,
        on_outcome: Callable[[SideOutcome], None] | None = None,
    ) -> list[SideOutcome]:
        """Run every enabled after-memory template on the scene ``start``-``end`` just memorised.

        A batch of at most ``concurrency`` runs at a time (their jobs still one after another);
        each has its own outcome, also passed to ``on_outcome`` as soon as it is known. The
        Memory screen and ``kvtui memory`` call this after a memory is saved.
        """
        limit = asyncio.Semaphore(self.concurrency)

        async def one(template: SidePrompt) -> SideOutcome:
            async with limit:
                try:
                    run = await asyncio.to_thread(self.plan, template, chat_id, span=(start, end))
                except FAILURES as err:
                    outcome = SideOutcome(template.name, chat_id, "failed", start, end,
                                          message=str(err))  # fmt: skip
                else:
                    outcome = await self.execute(run, decide)
            if on_outcome is not None:
                on_outcome(outcome)
            return outcome

        try:
            templates = await asyncio.to_thread(self.after_memory_templates)
        except FAILURES as err:
            failed = SideOutcome("side prompts", chat_id, "failed", start, end, message=str(err))
            if on_outcome is not None:
                on_outcome(failed)
            return [failed]
        return list(await asyncio.gather(*(one(t) for t in templates)))
