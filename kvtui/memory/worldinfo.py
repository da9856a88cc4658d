"""SillyTavern World Info as kvtui writes it: the entry template, placement, titles, book names.

Pure data and text: :data:`ENTRY_TEMPLATE` is SillyTavern's new-entry definition (every field an
entry kvtui writes carries), :class:`EntrySettings` how an entry is activated and placed,
:func:`format_title` the ``[000] - {{title}}`` titles, and :func:`book_name`,
:func:`book_file_name` and :func:`worlds_dir` where a book lives. The file itself (ownership,
reading, atomic writes) is :class:`kvtui.memory.lorebook.Lorebook`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvtui.memory.contract import Memory
from kvtui.memory.settings import EntryMode, MemorySettings, OrderMode

# SillyTavern 1.18 newWorldInfoEntryDefinition minus the fields excluded from the template.
ENTRY_TEMPLATE: dict[str, Any] = {
    "key": [],
    "keysecondary": [],
    "comment": "",
    "content": "",
    "constant": False,
    "vectorized": False,
    "selective": True,
    "selectiveLogic": 0,
    "addMemo": False,
    "order": 100,
    "position": 0,
    "disable": False,
    "ignoreBudget": False,
    "excludeRecursion": False,
    "preventRecursion": False,
    "matchPersonaDescription": False,
    "matchCharacterDescription": False,
    "matchCharacterPersonality": False,
    "matchCharacterDepthPrompt": False,
    "matchScenario": False,
    "matchCreatorNotes": False,
    "delayUntilRecursion": 0,
    "probability": 100,
    "useProbability": True,
    "depth": 4,
    "outletName": "",
    "group": "",
    "groupOverride": False,
    "groupWeight": 100,
    "scanDepth": None,
    "caseSensitive": None,
    "matchWholeWords": None,
    "useGroupScoring": None,
    "automationId": "",
    "role": 0,
    "sticky": None,
    "cooldown": None,
    "delay": None,
    "triggers": [],
}
_UNSAFE = re.compile(r'[\\/:*?"<>|\x00-\x1f\x7f]')
_NUMBER = re.compile(r"\[(0+)\]|\((0+)\)|\{(0+)\}|#(0+)")


@dataclass(frozen=True)
class EntrySettings:
    """How an entry is activated and placed (the memory settings, or a side prompt's own)."""

    mode: EntryMode = EntryMode.CONSTANT
    position: int = 1
    depth: int = 4
    outlet: str = ""
    order_mode: OrderMode = OrderMode.AUTO
    order_value: int = 100
    prevent_recursion: bool = True
    delay_until_recursion: bool = False

    @classmethod
    def from_memory(cls, ms: MemorySettings) -> EntrySettings:
        return cls(
            mode=ms.memory_mode,
            position=ms.memory_position,
            depth=ms.memory_depth,
            outlet=ms.memory_outlet,
            order_mode=ms.memory_order_mode,
            order_value=ms.memory_order_value,
            prevent_recursion=ms.memory_prevent_recursion,
            delay_until_recursion=ms.memory_delay_until_recursion,
        )

    def apply(self, entry: dict[str, Any], number: int | None) -> None:
        entry["constant"] = self.mode is EntryMode.CONSTANT
        entry["vectorized"] = self.mode is EntryMode.VECTORIZED
        entry["position"] = self.position
        entry["depth"] = self.depth
        entry["outletName"] = self.outlet if self.position == 7 else ""
        order = number if self.order_mode is OrderMode.AUTO and number is not None else None
        entry["order"] = max(0, min(9999, self.order_value if order is None else order))
        entry["preventRecursion"] = self.prevent_recursion
        entry["delayUntilRecursion"] = self.delay_until_recursion


def book_name(template: str, chat_title: str) -> str:
    """The book's name from ``memory_book_name`` (``{{chat}}`` = the chat's title)."""
    return template.replace("{{chat}}", chat_title).strip()


def book_file_name(name: str) -> str:
    """``name`` as a World Info file name (characters files cannot hold are replaced)."""
    safe = _UNSAFE.sub("_", name).strip().strip(".").strip()
    return f"{safe or 'kvtui'}.json"


def worlds_dir(st_dir: Path | None, data_dir: Path | None = None) -> Path:
    """SillyTavern's ``worlds/``, or ``worlds/`` in kvtui's data directory without one."""
    if st_dir is not None:
        return st_dir / "worlds"
    if data_dir is None:
        from platformdirs import user_data_path

        data_dir = user_data_path("kvtui")
    return data_dir / "worlds"


def format_title(
    fmt: str,
    number: int,
    memory: Memory,
    *,
    char: str = "",
    user: str = "",
    scene: str = "",
    messages: int = 0,
    now: datetime | None = None,
) -> str:
    """``[000] - {{title}}`` style titles: the first number placeholder is zero-padded."""
    moment = (now or datetime.now(UTC)).astimezone()

    def number_text(match: re.Match[str]) -> str:
        zeros = next(g for g in match.groups() if g)
        padded = str(number).zfill(len(zeros))
        return match.group(0).replace(zeros, padded)

    text = _NUMBER.sub(number_text, fmt, count=1)
    for key, value in (
        ("{{title}}", memory.title),
        ("{{char}}", char),
        ("{{user}}", user),
        ("{{scene}}", scene),
        ("{{messages}}", str(messages)),
        ("{{date}}", f"{moment:%Y-%m-%d}"),
        ("{{time}}", f"{moment:%H:%M}"),
    ):
        text = text.replace(key, value)
    return text.strip()


def binding_hint(name: str, path: Path, *, in_st: bool) -> str:
    """What the user does next in SillyTavern to use the book."""
    if not in_st:
        return (
            f"Saved to {path}. No SillyTavern directory is set (st_dir): import this file in "
            "SillyTavern's World Info panel, then bind it to the chat."
        )
    return (
        f'Saved to the lorebook "{name}". To use it, open the chat in SillyTavern, then the '
        'chat menu → "Chat Lore" (the book icon) and pick this book. SillyTavern\'s open tab '
        "caches lorebooks: reload the page before editing this book there, or the tab's copy "
        "overwrites kvtui's entries."
    )
