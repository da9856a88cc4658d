"""Shared helpers of the side-prompt tests: a SillyTavern-shaped data directory and templates."""

from __future__ import annotations

import json
from pathlib import Path

from kvtui.llama.client import LlamaClient
from kvtui.memory.jobs import JobRunner
from kvtui.memory.settings import MemorySettings
from kvtui.sideprompts.service import SidePromptService
from kvtui.sideprompts.templates import SidePrompt, Triggers
from kvtui.sillytavern import SillyTavernData
from kvtui.sillytavern.sample import SOLO_CHAT_ID

CHAT = SOLO_CHAT_ID
UTILITY = MemorySettings(memory_slot=3, memory_n_predict=64)


def chat_file(st_dir: Path) -> Path:
    return st_dir / "chats" / "Seraphina" / f"{CHAT}.jsonl"


def add_messages(st_dir: Path, count: int, *, system: bool = False) -> int:
    """Append ``count`` messages to the solo chat (as SillyTavern would); returns the newest id."""
    path = chat_file(st_dir)
    lines = path.read_text(encoding="utf-8").splitlines()
    for n in range(count):
        user = (len(lines) + n) % 2 == 0
        lines.append(
            json.dumps(
                {
                    "name": "Alex" if user else "Seraphina",
                    "is_user": user,
                    "is_system": system,
                    "send_date": "2026-05-03T16:00:00.000Z",
                    "mes": f"Message {len(lines) + n}: the lanterns by the river flicker.",
                    "extra": {},
                }
            )
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines) - 2  # minus the header, zero-based


def tiny(name: str, **triggers: object) -> SidePrompt:
    return SidePrompt(
        name=name,
        prompt="Update the tracker of {{char}} and {{user}} in a few words.",
        triggers=Triggers.model_validate(triggers),
        n_predict=24,
    )


def make_service(
    client: LlamaClient, st_dir: Path, state_dir: Path, settings: MemorySettings = UTILITY
) -> SidePromptService:
    runner = JobRunner(client, settings)
    return SidePromptService(SillyTavernData(st_dir), state_dir, settings, runner)


def only(service: SidePromptService, *templates: SidePrompt) -> None:
    """Replace the library's built-ins with ``templates``."""
    for name in service.library.names():
        service.library.delete(name)
    for t in templates:
        service.library.add(t)
