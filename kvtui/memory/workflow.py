"""From a chat to a saved memory: the steps the Memory screen and ``kvtui memory`` share.

``MemoryWorkflow.plan`` reads the chat and builds the scene and prompt; ``estimate`` asks the
server for the token count; ``generate`` runs the KV-safe job and hands back a :class:`Preview`
(``regenerate`` refills it on retry); ``save`` writes an accepted preview's memory to the chat's
lorebook and records kvtui's progress. Nothing is written before ``save`` of an accepted preview.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from kvtui.memory.contract import Memory, memory_schema
from kvtui.memory.jobs import JobRunner, OnProgress, TokenBudget
from kvtui.memory.lorebook import (
    EntrySettings,
    Lorebook,
    StoredMemory,
    binding_hint,
    book_file_name,
    book_name,
    worlds_dir,
)
from kvtui.memory.preview import Preview, PreviewError
from kvtui.memory.prompt import DEFAULT_PRESET, BuiltPrompt, Preset, build_prompt, preset_library
from kvtui.memory.scene import (
    ProgressStore,
    Scene,
    SceneError,
    StartPoint,
    chat_names,
    default_start,
    parse_range,
    select_scene,
)
from kvtui.memory.settings import MemorySettings, memory_dir
from kvtui.sillytavern import Chat, ChatRef, SillyTavernData, SillyTavernError


@dataclass(frozen=True)
class MemoryPlan:
    """Everything a memory job needs, decided before anything runs."""

    ref: ChatRef
    scene: Scene
    start_point: StartPoint
    preset: Preset
    prompt: BuiltPrompt
    previous: tuple[Memory, ...]
    book_name: str
    book_path: Path


@dataclass(frozen=True)
class SavedMemory:
    stored: StoredMemory
    book_name: str
    book_path: Path
    hint: str


def chat_title(ref: ChatRef) -> str:
    """How a chat is named in its book's name: the 1:1 chat's id, or ``Group - chat id``."""
    return f"{ref.display_name} - {ref.chat_id}" if ref.is_group else ref.chat_id


class MemoryWorkflow:
    """Memory operations for one SillyTavern data directory and one job runner."""

    def __init__(
        self,
        st_data: SillyTavernData,
        state_dir: Path,
        settings: MemorySettings,
        runner: JobRunner,
        *,
        worlds: Path | None = None,
    ) -> None:
        self.st_data = st_data
        self.settings = settings
        self.runner = runner
        self.dir = memory_dir(state_dir)
        self.presets = preset_library(self.dir)
        self.progress = ProgressStore(self.dir / "progress.json")
        self.worlds = worlds or worlds_dir(st_data.user_dir)
        self.in_st = self.worlds == worlds_dir(st_data.user_dir)

    # -- reading -----------------------------------------------------------------------------

    def find_chat(self, chat_id: str) -> ChatRef:
        ref = self.st_data.find_chat(chat_id)
        if ref is None:
            raise SceneError(
                f"No chat {chat_id!r} in {self.st_data.user_dir}: give a chat id as "
                "SillyTavern names it (a group chat id or a chat file name without .jsonl)."
            )
        return ref

    def book_for(self, ref: ChatRef) -> tuple[str, Path]:
        name = book_name(self.settings.memory_book_name, chat_title(ref))
        return name, self.worlds / book_file_name(name)

    def open_book(self, ref: ChatRef) -> Lorebook:
        _, path = self.book_for(ref)
        return Lorebook.open(path, ref.chat_id)

    def memories(self, ref: ChatRef) -> list[StoredMemory]:
        """The chat's existing kvtui memories, oldest first."""
        return self.open_book(ref).memories()

    def _read(self, ref: ChatRef) -> Chat:
        try:
            return self.st_data.read_chat(ref)
        except SillyTavernError as err:
            raise SceneError(str(err)) from err

    def start_point(self, chat: Chat, stored: list[StoredMemory]) -> StartPoint:
        point = default_start(chat, self.progress)
        ends = [m.end for m in stored if m.end is not None]
        if ends and (point.source != "kvtui" or max(ends) + 1 > point.start):
            return StartPoint(max(ends) + 1, "kvtui")
        return point

    def plan(
        self,
        chat_id: str,
        range_text: str | None = None,
        preset_name: str | None = None,
        *,
        previous: int | None = None,
    ) -> MemoryPlan:
        """Read the chat and decide the scene and prompt; raises ``SceneError`` or
        ``LibraryError`` (or ``BookError`` for a book kvtui does not own)."""
        ref = self.find_chat(chat_id)
        chat = self._read(ref)
        book = self.open_book(ref)
        stored = book.memories()
        point = self.start_point(chat, stored)
        if range_text:
            start, end = parse_range(range_text)
        else:
            start, end = point.start, None
        members = self.st_data.members(ref)
        char_fallback = ", ".join(m.name for m in members) or ref.display_name
        user, char = chat_names(chat, self.st_data.user_name(), char_fallback)
        scene = select_scene(chat, start, end, user=user, char=char)
        preset = self.presets.get(preset_name or DEFAULT_PRESET)
        count = self.settings.memory_previous if previous is None else previous
        earlier = tuple(m.memory for m in stored if m.end is None or m.end < scene.start)
        chosen = earlier[-count:] if count > 0 else ()
        prompt = build_prompt(preset, scene, chosen, self.settings.memory_outgoing_regex)
        name, path = self.book_for(ref)
        return MemoryPlan(ref, scene, point, preset, prompt, chosen, name, path)

    # -- running -----------------------------------------------------------------------------

    def schema(self) -> dict[str, object]:
        s = self.settings
        return memory_schema(
            s.memory_max_title_chars, s.memory_max_content_chars, s.memory_max_keywords
        )

    async def estimate(self, plan: MemoryPlan) -> TokenBudget:
        return await self.runner.budget(plan.prompt.text)

    async def generate(self, plan: MemoryPlan, on_progress: OnProgress | None = None) -> Preview:
        """Run the job and return a preview (``READY`` or ``FAILED``); writes nothing."""
        preview = Preview()
        await self.regenerate(plan, preview, on_progress)
        return preview

    async def regenerate(
        self, plan: MemoryPlan, preview: Preview, on_progress: OnProgress | None = None
    ) -> None:
        """Fill ``preview`` (``WAITING``, after ``retry()``) with a new reply."""
        result = await self.runner.run(
            plan.prompt.text, json_schema=self.schema(), on_progress=on_progress
        )
        preview.offer(result.content, stop_type=result.stop_type, truncated=result.truncated)

    # -- saving ------------------------------------------------------------------------------

    async def save(self, plan: MemoryPlan, preview: Preview) -> SavedMemory:
        """Write an accepted preview's memory; anything else writes nothing."""
        memory = preview.accepted
        if memory is None:
            raise PreviewError(f"The preview is {preview.state.value}: nothing to save.")
        return await asyncio.to_thread(self._save, plan, memory)

    def _save(self, plan: MemoryPlan, memory: Memory) -> SavedMemory:
        book = Lorebook.open(plan.book_path, plan.ref.chat_id)
        stored = book.add_memory(
            memory,
            (plan.scene.start, plan.scene.end),
            EntrySettings.from_memory(self.settings),
            title_format=self.settings.memory_title_format,
            char=plan.scene.char,
            user=plan.scene.user,
        )
        self.progress.record(plan.ref.chat_id, plan.scene.start, plan.scene.end)
        hint = binding_hint(plan.book_name, plan.book_path, in_st=self.in_st)
        return SavedMemory(stored, plan.book_name, plan.book_path, hint)
