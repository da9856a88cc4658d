"""Planning a side-prompt run: which messages, which tracker entry, which prompt.

:class:`SidePromptPlanner` reads SillyTavern's chats and the chat's kvtui lorebook and decides
a :class:`~kvtui.sideprompts.runs.SideRun`: the scene (a range, or the messages since the
template's checkpoint capped to the newest ``window`` visible ones), the tracker's current
entry text, the requested earlier memories and the prompt. It writes nothing but checkpoints
(:meth:`advance`). :class:`kvtui.sideprompts.service.SidePromptService` adds running and saving.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from kvtui.memory.lorebook import Lorebook, book_file_name, book_name, worlds_dir
from kvtui.memory.scene import (
    ProgressStore,
    SceneError,
    chat_names,
    parse_range,
    select_scene,
    stmb_progress,
)
from kvtui.memory.settings import MemorySettings, memory_dir
from kvtui.memory.workflow import chat_title
from kvtui.sideprompts.checkpoints import CheckpointStore
from kvtui.sideprompts.prompt import build_prompt
from kvtui.sideprompts.runs import SideRun
from kvtui.sideprompts.templates import SidePrompt, sideprompt_dir, template_library
from kvtui.sillytavern import Chat, ChatRef, SillyTavernData, SillyTavernError

RECENT_WINDOW = 200
"""Most visible messages a compiled scene holds (the newest ones)."""


class SidePromptPlanner:
    def __init__(
        self,
        st_data: SillyTavernData,
        state_dir: Path,
        settings: MemorySettings,
        *,
        worlds: Path | None = None,
        window: int = RECENT_WINDOW,
    ) -> None:
        self.st_data = st_data
        self.settings = settings
        self.library = template_library(state_dir)
        self.checkpoints = CheckpointStore(sideprompt_dir(state_dir) / "checkpoints.json")
        self.progress = ProgressStore(memory_dir(state_dir) / "progress.json")
        self.worlds = worlds or worlds_dir(st_data.user_dir)
        self.in_st = self.worlds == worlds_dir(st_data.user_dir)
        self.window = max(1, window)

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

    def advance(self, run: SideRun) -> None:
        """Move the template's checkpoint to the end of ``run``'s scene (never backwards)."""
        chat_id, key = run.ref.chat_id, run.template.key
        previous = self.checkpoints.get(chat_id, key)
        self.checkpoints.set(chat_id, key, max(run.scene.end, -1 if previous is None else previous))
