"""Running side prompts: plan a scene, run the KV-safe job, preview, upsert the tracker entry.

:class:`SidePromptService` is shared by the CLI, the dashboard screen, the interval trigger and
the memory workflow (``run_after_memory``). Every generation goes through the memory job runner
(:class:`kvtui.memory.jobs.JobRunner`: utility slot, or a borrowed slot parked and restored under
the routing gate), and through one lock of this service, so a batch never runs two jobs at once
and no character loses its cache. The entry is found by its title and its content replaced, or
created with the template's lorebook settings, in the chat's kvtui book; nothing is written
before a preview is accepted. A template's checkpoint advances when its run is saved or
declined by the interval trigger's preview, never on a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kvtui.llama.errors import LlamaError, ServerUnreachable
from kvtui.memory.contract import Memory
from kvtui.memory.jobs import JobError, JobRunner, OnProgress
from kvtui.memory.library import LibraryError
from kvtui.memory.lorebook import (
    BookError,
    Lorebook,
    binding_hint,
    book_file_name,
    book_name,
    worlds_dir,
)
from kvtui.memory.preview import PreviewError, PreviewState
from kvtui.memory.prompt import RegexError
from kvtui.memory.scene import (
    ProgressStore,
    Scene,
    SceneError,
    chat_names,
    parse_range,
    select_scene,
    stmb_progress,
)
from kvtui.memory.settings import MemorySettings, memory_dir
from kvtui.memory.workflow import chat_title
from kvtui.sideprompts.checkpoints import CheckpointStore
from kvtui.sideprompts.prompt import SidePromptText, TextPreview, build_prompt
from kvtui.sideprompts.templates import KIND, SidePrompt, sideprompt_dir, template_library
from kvtui.sillytavern import Chat, ChatRef, SillyTavernData, SillyTavernError

RECENT_WINDOW = 200
"""Most visible messages a compiled scene holds (the newest ones)."""

FAILURES = (
    SceneError,
    LibraryError,
    BookError,
    JobError,
    LlamaError,
    RegexError,
    PreviewError,
    OSError,
)


_BOOK_LOCKS: dict[Path, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def _book_lock(path: Path) -> threading.Lock:
    """One lock per book file, so concurrent upserts never lose each other's entries."""
    with _LOCKS_LOCK:
        return _BOOK_LOCKS.setdefault(path.resolve(), threading.Lock())


class SidePromptRefused(SceneError):
    """A run the template does not allow (manual runs switched off, or disabled)."""


@dataclass(frozen=True)
class SideRun:
    """One planned run: the template, the chat, the scene and the prompt."""

    template: SidePrompt
    ref: ChatRef
    scene: Scene
    prompt: SidePromptText
    current: str | None
    """The tracker's entry text before this run (None: no entry yet)."""
    previous: tuple[Memory, ...]
    book_name: str
    book_path: Path


@dataclass(frozen=True)
class SideOutcome:
    template: str
    chat: str
    status: str
    """``saved``, ``cancelled`` or ``failed``."""
    start: int | None = None
    end: int | None = None
    text: str = ""
    uid: int | None = None
    message: str = ""
    slot: int | None = None
    mode: str = ""
    hint: str = ""
    """How to bind the book to the chat in SillyTavern (for a saved run)."""

    @property
    def ok(self) -> bool:
        return self.status == "saved"


Decide = Callable[[SideRun, TextPreview], Awaitable[None]]
"""Drives a preview to accepted or cancelled (it may call ``service.regenerate`` to retry)."""


class SidePromptService:
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
        self.st_data = st_data
        self.settings = settings
        self.runner = runner
        self.library = template_library(state_dir)
        self.checkpoints = CheckpointStore(sideprompt_dir(state_dir) / "checkpoints.json")
        self.progress = ProgressStore(memory_dir(state_dir) / "progress.json")
        self.worlds = worlds or worlds_dir(st_data.user_dir)
        self.in_st = self.worlds == worlds_dir(st_data.user_dir)
        self.concurrency = max(1, concurrency)
        self.window = max(1, window)
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

    # -- reading -----------------------------------------------------------------------------

    def find_chat(self, chat_id: str) -> ChatRef:
        ref = self.st_data.find_chat(chat_id)
        if ref is None:
            raise SceneError(
                f"No chat {chat_id!r} in {self.st_data.user_dir}: give a chat id as "
                "SillyTavern names it (a group chat id or a chat file name without .jsonl)."
            )
        return ref

    def read_chat(self, ref: ChatRef) -> Chat:
        try:
            return self.st_data.read_chat(ref)
        except SillyTavernError as err:
            raise SceneError(str(err)) from err

    def book_for(self, ref: ChatRef) -> tuple[str, Path]:
        name = book_name(self.settings.memory_book_name, chat_title(ref))
        return name, self.worlds / book_file_name(name)

    def baseline(self, chat: Chat, template: SidePrompt) -> int:
        """The last message ``template`` has seen in ``chat`` (-1: none)."""
        chat_id = chat.ref.chat_id
        for value in (
            self.checkpoints.get(chat_id, template.key),
            self.progress.last_end(chat_id),
            stmb_progress(chat),
        ):
            if value is not None:
                return value
        return -1

    @staticmethod
    def visible_since(chat: Chat, last: int) -> int:
        """Visible (non-system) messages after message ``last``."""
        return sum(1 for i, m in enumerate(chat.messages) if i > last and not m.is_system)

    def entry_text(self, ref: ChatRef, template: SidePrompt) -> str | None:
        _, path = self.book_for(ref)
        entry = Lorebook.open(path, ref.chat_id).find_by_title(template.title)
        return None if entry is None else str(entry.get("content") or "")

    # -- planning ----------------------------------------------------------------------------

    def template(self, name: str | SidePrompt) -> SidePrompt:
        return name if isinstance(name, SidePrompt) else self.library.get(name)

    def plan(
        self,
        name: str | SidePrompt,
        chat_id: str,
        range_text: str | None = None,
        *,
        span: tuple[int, int | None] | None = None,
    ) -> SideRun:
        """Decide the scene and prompt. Without a range or ``span``: the messages since the
        template's checkpoint, capped to the newest ``window`` visible ones."""
        template = self.template(name)
        ref = self.find_chat(chat_id)
        chat = self.read_chat(ref)
        capped = False
        if span is None and range_text:
            span = parse_range(range_text)
        if span is None:
            last = self.baseline(chat, template)
            if self.visible_since(chat, last) == 0:
                raise SceneError(
                    f'No new messages since "{template.name}" last ran (message {last}); give '
                    "a range, e.g. 0-20."
                )
            span, capped = (last + 1, None), True
        members = self.st_data.members(ref)
        fallback = ", ".join(m.name for m in members) or ref.display_name
        user, char = chat_names(chat, self.st_data.user_name(), fallback)
        scene = select_scene(chat, span[0], span[1], user=user, char=char)
        if capped and len(scene.lines) > self.window:
            lines = scene.lines[-self.window :]
            scene = replace(scene, start=lines[0].index, lines=lines)
        name_, path = self.book_for(ref)
        book = Lorebook.open(path, ref.chat_id)
        entry = book.find_by_title(template.title)
        current = None if entry is None else str(entry.get("content") or "")
        count = template.previous_memories
        earlier = [m.memory for m in book.memories() if m.end is None or m.end < scene.start]
        previous = tuple(earlier[-count:]) if count > 0 else ()
        prompt = build_prompt(
            template, scene, current, previous, self.settings.memory_outgoing_regex
        )
        return SideRun(template, ref, scene, prompt, current, previous, name_, path)

    # -- running -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _runner(self, template: SidePrompt) -> AsyncIterator[JobRunner]:
        if template.server_url is None:
            yield self.runner
            return
        settings = self.settings.model_copy(
            update={"memory_server_url": template.server_url, "memory_api_key": template.api_key}
        )
        base = self.runner
        async with JobRunner(base.client, settings, base.gate, base.busy) as runner:
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
        preview.offer(result.content, truncated=result.truncated or result.stop_type == "limit")
        preview.slot, preview.mode = result.slot, result.mode

    async def save(self, run: SideRun, preview: TextPreview) -> dict[str, object]:
        """Write an accepted preview's text into the tracker entry; anything else writes nothing."""
        text = preview.accepted
        if text is None:
            raise PreviewError(f"The preview is {preview.state.value}: nothing to save.")
        return await asyncio.to_thread(self._save, run, text)

    def _save(self, run: SideRun, text: str) -> dict[str, object]:
        with _book_lock(run.book_path):  # a batch's saves re-read and replace the same file
            return self._upsert(run, text)

    def _upsert(self, run: SideRun, text: str) -> dict[str, object]:
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

    def advance(self, run: SideRun) -> None:
        chat_id, key = run.ref.chat_id, run.template.key
        previous = self.checkpoints.get(chat_id, key)
        self.checkpoints.set(chat_id, key, max(run.scene.end, -1 if previous is None else previous))

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

    async def run_after_memory(
        self, chat_id: str, start: int, end: int, decide: Decide | None = None
    ) -> list[SideOutcome]:
        """Run every enabled after-memory template on the scene ``start``-``end`` just memorised.

        A batch of at most ``concurrency`` runs at a time (their jobs still one after another);
        each has its own outcome. The memory workflow calls this after a memory is saved.
        """
        templates = [t for t in self.library.all() if t.enabled and t.triggers.after_memory]
        limit = asyncio.Semaphore(self.concurrency)

        async def one(template: SidePrompt) -> SideOutcome:
            async with limit:
                try:
                    run = await asyncio.to_thread(self.plan, template, chat_id, span=(start, end))
                except FAILURES as err:
                    return SideOutcome(template.name, chat_id, "failed", start, end,
                                       message=str(err))  # fmt: skip
                return await self.execute(run, decide)

        return list(await asyncio.gather(*(one(t) for t in templates)))
