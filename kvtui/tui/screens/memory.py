"""The Memory screen: turn a scene of a SillyTavern chat into a lorebook memory.

Choose a chat, a message range (empty: since the chat's last memory) and a preset; the plan line
shows the scene and the server's token count. Run starts the KV-safe job in this screen's worker
(progress messages replace each other; Esc cancels, and the job still restores any slot it
borrowed). The preview's title, text and keywords are editable (:mod:`memory_preview`): Accept
saves what the fields hold, Retry asks for a new reply, Esc discards it. Nothing is written
before Accept. Once a memory is saved, the chat's after-memory side prompts run on its scene
(:mod:`memory_after`: one notification per template). The chat's existing kvtui memories are
listed below.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, Footer, Input, Label, OptionList, Select, Static

from kvtui.llama import LlamaError
from kvtui.memory.contract import MemoryReplyError
from kvtui.memory.jobs import JobError, JobProgress, JobRunner
from kvtui.memory.library import LibraryError
from kvtui.memory.lorebook import BookError
from kvtui.memory.preview import Preview, PreviewState
from kvtui.memory.prompt import DEFAULT_PRESET, RegexError
from kvtui.memory.scene import SceneError
from kvtui.memory.settings import MemorySettings
from kvtui.memory.workflow import MemoryPlan, MemoryWorkflow, SavedMemory
from kvtui.service import KvService
from kvtui.tui.screens.memory_after import AfterMemory, service_gate
from kvtui.tui.screens.memory_presets import PresetManager
from kvtui.tui.screens.memory_preview import MemoryPreviewPanel, describe_plan

_PLAN_ERRORS = (SceneError, LibraryError, BookError, RegexError, OSError)
_JOB_ERRORS = (JobError, LlamaError, MemoryReplyError, BookError, OSError)


@dataclass
class MemoryProgress(Message):
    step: JobProgress


class MemoryScreen(Screen[None]):
    """Make a memory of a chat's scene, preview and edit it, save it to the chat's lorebook."""

    DEFAULT_CSS = """
    MemoryScreen #memory { padding: 0 1; }
    MemoryScreen #memory-title { text-style: bold; height: 1; }
    MemoryScreen #memory-choices { height: auto; }
    MemoryScreen #memory-chat { width: 2fr; }
    MemoryScreen #memory-range { width: 1fr; }
    MemoryScreen #memory-preset { width: 1fr; }
    MemoryScreen .memory-line { height: auto; width: 100%; color: $text-muted; }
    MemoryScreen #memory-status.error { color: $text-error; }
    MemoryScreen #memory-existing { height: 8; border: round $primary 30%; }
    """

    BINDINGS = [
        Binding("escape", "cancel_or_close", "Cancel / close", id="memory.cancel"),
        Binding("ctrl+r", "run", "Run", id="memory.run"),
        Binding("ctrl+s", "accept", "Accept", id="memory.accept"),
        Binding("ctrl+t", "retry", "Retry", id="memory.retry"),
        Binding("ctrl+o", "presets", "Presets", id="memory.presets"),
    ]

    def __init__(
        self,
        service: KvService,
        chat: str | None = None,
        *,
        memory_settings: MemorySettings | None = None,
        runner: JobRunner | None = None,
        side_previews: bool | None = None,
    ) -> None:
        super().__init__()
        self.service = service
        settings = service.settings
        self.memory_settings = memory_settings or MemorySettings.from_settings(settings)
        self.runner = runner or JobRunner(
            service.client, self.memory_settings, gate=service_gate(service)
        )
        self._owns_runner = runner is None
        self.st_data = service.st_data  # the service owns SillyTavern's data directory
        self.flow: MemoryWorkflow | None = None
        self.after: AfterMemory | None = None
        """The after-memory side prompts (``side_previews``: None follows the settings)."""
        if self.st_data is not None:
            ms, data = self.memory_settings, self.st_data
            self.flow = MemoryWorkflow(data, settings.state_dir, ms, self.runner)
            self.after = AfterMemory(service, self.runner, data, ms, previews=side_previews)
        self.after_running = False
        self.chat = chat
        self.plan: MemoryPlan | None = None
        self.preview: Preview | None = None
        self.saved: SavedMemory | None = None
        self.running = False
        self.status_text = ""

    def compose(self) -> ComposeResult:
        with Vertical(id="memory"):
            yield Static("Memory", id="memory-title")
            with Horizontal(id="memory-choices"):
                yield Select[str]([], prompt="Chat", id="memory-chat", allow_blank=True)
                yield Input(placeholder="range X-Y (empty: since last memory)", id="memory-range")
                yield Select[str]([], prompt="Preset", id="memory-preset", allow_blank=True)
            yield Label("", id="memory-plan", markup=False, classes="memory-line")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Run (ctrl+r)", variant="primary", id="memory-run")
                yield Button("Accept (ctrl+s)", variant="success", id="memory-accept")
                yield Button("Retry (ctrl+t)", id="memory-retry")
                yield Button("Presets (ctrl+o)", id="memory-presets")
                yield Button("Cancel (esc)", id="memory-cancel")
            yield Label("", id="memory-status", markup=False, classes="memory-line")
            yield MemoryPreviewPanel(id="memory-preview")
            yield OptionList(id="memory-existing")
        yield Footer()

    async def on_mount(self) -> None:
        self.query_one("#memory-preview").border_title = "Preview"
        self.query_one("#memory-existing").border_title = "This chat's memories"
        self._buttons()
        if self.flow is None or self.st_data is None:
            self._status(
                "No SillyTavern data directory is set (settings: st_dir), so there are no chats "
                "to make memories of.",
                error=True,
            )
            return
        try:
            names = await asyncio.to_thread(self.flow.presets.names)
        except LibraryError as err:
            self._status(str(err), error=True)
            names = []
        preset = self.query_one("#memory-preset", Select)
        preset.set_options([(n, n) for n in names])
        if DEFAULT_PRESET in names:
            preset.value = DEFAULT_PRESET
        chats = await asyncio.to_thread(self.st_data.chats)
        select = self.query_one("#memory-chat", Select)
        options = [(f"{c.display_name}  ({c.chat_id})", c.chat_id) for c in chats]
        select.set_options(options)
        default = self.chat or self.service.current_chat or (chats[0].chat_id if chats else None)
        if default is not None and any(v == default for _, v in options):
            self.chat = default
            select.value = default
        self._replan()

    async def on_unmount(self) -> None:
        if self._owns_runner:
            await self.runner.aclose()

    # -- planning ----------------------------------------------------------------------------

    @on(Select.Changed, "#memory-chat")
    def _chat_chosen(self, event: Select.Changed) -> None:
        if isinstance(event.value, str) and event.value != self.chat:
            self.chat = event.value
            self._replan()

    @on(Select.Changed, "#memory-preset")
    @on(Input.Submitted, "#memory-range")
    def _choice_changed(self) -> None:
        self._replan()

    def _choices(self) -> tuple[str | None, str | None, str | None]:
        preset = self.query_one("#memory-preset", Select).value
        text = self.query_one("#memory-range", Input).value.strip()
        return self.chat, text or None, preset if isinstance(preset, str) else None

    def _replan(self) -> None:
        if self.flow is not None and not self.running:
            self._plan(*self._choices())

    @work(exclusive=True, group="memory-plan", exit_on_error=False, description="Memory plan")
    async def _plan(self, chat: str | None, range_text: str | None, preset: str | None) -> None:
        assert self.flow is not None
        if chat is None:
            self._plan_line("Choose a chat.")
            return
        try:
            plan = await asyncio.to_thread(self.flow.plan, chat, range_text, preset)
        except _PLAN_ERRORS as err:
            self.plan = None
            self._plan_line(str(err))
            self._buttons()
            return
        self.plan = plan
        self._buttons()
        await self._show_existing(plan)
        line = describe_plan(plan)
        self._plan_line(line + " Counting tokens…")
        try:
            budget = await self.flow.estimate(plan)
        except LlamaError as err:
            self._plan_line(f"{line} No token count: {err.message}")
            return
        self._plan_line(f"{line} {budget.tokens} tokens. {budget.warning or ''}".strip())

    async def _show_existing(self, plan: MemoryPlan) -> None:
        assert self.flow is not None
        try:
            stored = await asyncio.to_thread(self.flow.memories, plan.ref)
        except BookError as err:
            stored = []
            self._status(str(err), error=True)
        existing = self.query_one("#memory-existing", OptionList)
        existing.clear_options()
        existing.add_options(
            [f"{m.title}  (messages {m.start}-{m.end})" for m in stored] or ["(none yet)"]
        )

    # -- running -----------------------------------------------------------------------------

    def action_run(self) -> None:
        if self.running or self.after_running or self.plan is None or self.flow is None:
            return
        self.preview = Preview()
        self._start(self.plan, self.preview)

    def action_retry(self) -> None:
        if self.running or self.plan is None or self.preview is None:
            return
        if self.preview.state not in (PreviewState.READY, PreviewState.FAILED):
            return
        self.preview.retry()
        self._start(self.plan, self.preview)

    def _start(self, plan: MemoryPlan, preview: Preview) -> None:
        self.running = True
        self.saved = None
        self._buttons()
        self._status("Starting the memory job…")
        self._job(plan, preview)

    @work(exclusive=True, group="memory-job", exit_on_error=False, description="Memory job")
    async def _job(self, plan: MemoryPlan, preview: Preview) -> None:
        assert self.flow is not None
        try:
            await self.flow.regenerate(plan, preview, self._post_progress)
        except asyncio.CancelledError:
            preview.cancel()
            self._status("Cancelled; nothing was saved and any borrowed slot was restored.")
            raise
        except _JOB_ERRORS as err:
            preview.cancel()
            self._status(f"The job failed: {err}", error=True)
        finally:
            self.running = False
            self._buttons()
        self._show_preview()

    def _post_progress(self, step: JobProgress) -> None:
        self.post_message(MemoryProgress(step))

    def on_memory_progress(self, message: MemoryProgress) -> None:
        step = message.step
        if self.running:
            tokens = f", {step.tokens} tokens" if step.tokens else ""
            self._status(f"{step.detail}{tokens}… {step.elapsed:.1f} s")

    def _show_preview(self) -> None:
        shown = self.query_one(MemoryPreviewPanel).show(self.preview)
        if shown is not None:
            self._status(shown[0], error=shown[1])

    # -- preview actions ---------------------------------------------------------------------

    def action_accept(self) -> None:
        preview, plan = self.preview, self.plan
        if self.running or preview is None or plan is None:
            return
        title, content, words = self.query_one(MemoryPreviewPanel).fields()
        try:
            if preview.state is PreviewState.FAILED:
                preview.edit_raw(content)
            elif preview.state is PreviewState.READY:
                assert preview.memory is not None
                keywords = [w for w in words.split(",")]
                if (title, content, tuple(k.strip() for k in keywords if k.strip())) != (
                    preview.memory.title,
                    preview.memory.content,
                    preview.memory.keywords,
                ):
                    preview.edit(title=title, content=content, keywords=keywords)
            else:
                return
            preview.accept()
        except MemoryReplyError as err:
            self._status(str(err), error=True)
            return
        self._save(plan, preview)

    @work(exclusive=True, group="memory-save", exit_on_error=False, description="Save memory")
    async def _save(self, plan: MemoryPlan, preview: Preview) -> None:
        assert self.flow is not None
        try:
            saved = await self.flow.save(plan, preview)
        except _JOB_ERRORS as err:
            self._status(f"Not saved: {err}", error=True)
            return
        self.saved = saved
        self.preview = None
        self._clear_preview()
        self._status(f"Saved {saved.stored.title!r}. {saved.hint}")
        self.notify(f"Memory saved to {saved.book_name}.", title="Memory")
        self.query_one("#memory-range", Input).value = ""
        self._replan()
        after = self.after
        if after is not None and len(await asyncio.to_thread(after.templates)) > 0:
            self.after_running = True
            self._buttons()
            self._after(plan.ref.chat_id, plan.scene.start, plan.scene.end)

    @work(group="memory-after", exit_on_error=False, description="After-memory side prompts")
    async def _after(self, chat_id: str, start: int, end: int) -> None:
        """The side prompts on the scene just memorised (Run waits for them: same job runner)."""
        assert self.after is not None
        try:
            summary = await self.after.run(self, chat_id, start, end)
        finally:
            self.after_running = False
            self._buttons()
        self._status(f"{self.status_text} {summary}", error=" 0 failed" not in summary)

    def action_presets(self) -> None:
        if self.flow is None or self.running:
            return
        current = self.query_one("#memory-preset", Select).value
        manager = PresetManager(self.flow.presets, current if isinstance(current, str) else None)
        self.app.push_screen(manager, self._presets_closed)

    async def _presets_closed(self, chosen: str | None) -> None:
        assert self.flow is not None
        try:
            names = await asyncio.to_thread(self.flow.presets.names)
        except LibraryError as err:
            self._status(str(err), error=True)
            return
        select = self.query_one("#memory-preset", Select)
        select.set_options([(n, n) for n in names])
        pick = chosen if chosen in names else (DEFAULT_PRESET if DEFAULT_PRESET in names else None)
        if pick is not None:
            select.value = pick
        self._replan()

    def action_cancel_or_close(self) -> None:
        if self.running:
            self._status("Cancelling…")
            self.workers.cancel_group(self, "memory-job")
        elif self.preview is not None and self.preview.state in (
            PreviewState.READY,
            PreviewState.FAILED,
        ):
            self.preview.cancel()
            self.preview = None
            self._clear_preview()
            self._status("Discarded; nothing was saved.")
        else:
            self.dismiss(None)

    _BUTTONS = {"memory-run": "run", "memory-accept": "accept", "memory-retry": "retry",
                "memory-presets": "presets", "memory-cancel": "cancel_or_close"}  # fmt: skip

    def on_button_pressed(self, event: Button.Pressed) -> None:
        action = self._BUTTONS.get(event.button.id or "")
        if action is not None:
            getattr(self, f"action_{action}")()

    # -- view helpers ------------------------------------------------------------------------

    def _clear_preview(self) -> None:
        self.query_one(MemoryPreviewPanel).clear()

    def _buttons(self) -> None:
        ready = self.preview is not None and self.preview.state in (
            PreviewState.READY,
            PreviewState.FAILED,
        )
        busy = self.running or self.after_running
        self.query_one("#memory-run", Button).disabled = busy or self.plan is None
        self.query_one("#memory-accept", Button).disabled = self.running or not ready
        self.query_one("#memory-retry", Button).disabled = self.running or not ready

    def _plan_line(self, text: str) -> None:
        self.query_one("#memory-plan", Label).update(text)

    def _status(self, text: str, *, error: bool = False) -> None:
        self.status_text = text
        label = self.query_one("#memory-status", Label)
        label.update(text)
        label.set_class(error, "error")
