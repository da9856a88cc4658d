"""The lorebook writer: SillyTavern's World Info format, ownership, numbering, in-place updates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvtui.memory.contract import Memory
from kvtui.memory.lorebook import (
    ENTRY_TEMPLATE,
    BookError,
    EntrySettings,
    Lorebook,
    book_file_name,
    format_title,
)
from kvtui.memory.settings import EntryMode, MemorySettings, OrderMode

# The reference's field list (reference/memory.md §1.2, from world-info.js).
ST_FIELDS = {
    "key": [], "keysecondary": [], "comment": "", "content": "", "constant": False,
    "vectorized": False, "selective": True, "selectiveLogic": 0, "addMemo": False,
    "order": 100, "position": 0, "disable": False, "ignoreBudget": False,
    "excludeRecursion": False, "preventRecursion": False, "delayUntilRecursion": 0,
    "matchPersonaDescription": False, "matchCharacterDescription": False,
    "matchCharacterPersonality": False, "matchCharacterDepthPrompt": False,
    "matchScenario": False, "matchCreatorNotes": False, "probability": 100,
    "useProbability": True, "depth": 4, "outletName": "", "group": "", "groupOverride": False,
    "groupWeight": 100, "scanDepth": None, "caseSensitive": None, "matchWholeWords": None,
    "useGroupScoring": None, "automationId": "", "role": 0, "sticky": None, "cooldown": None,
    "delay": None, "triggers": [],
}  # fmt: skip
SET_BY_KVTUI = {
    "key", "comment", "content", "constant", "vectorized", "addMemo", "order", "position",
    "depth", "outletName", "preventRecursion", "delayUntilRecursion",
}  # fmt: skip
MEMORY = Memory("Rooftop Truce", "Alice and Bob agree to scout K-17 at dawn.", ("Alice", "K-17"))


def test_template_is_sillytaverns() -> None:
    assert ENTRY_TEMPLATE == ST_FIELDS


def test_new_book_entry_has_every_field(tmp_path: Path) -> None:
    path = tmp_path / "worlds" / "kvtui - chat.json"
    book = Lorebook.open(path, "chat-1")
    stored = book.add_memory(MEMORY, (4, 9), EntrySettings())
    data = json.loads(path.read_text())
    assert data["kvtui"]["owner"] == "kvtui" and data["kvtui"]["chat"] == "chat-1"
    entry = data["entries"]["0"]
    assert entry["uid"] == 0 and stored.uid == 0
    for name, default in ST_FIELDS.items():
        assert name in entry, name
        if name not in SET_BY_KVTUI:
            assert entry[name] == default, name
    assert entry["key"] == ["Alice", "K-17"] and entry["keysecondary"] == []
    assert entry["comment"] == "[001] - Rooftop Truce"
    assert entry["content"] == MEMORY.content
    assert entry["kvtui"] is True and "stmemorybooks" not in entry
    assert (entry["kvtui_start"], entry["kvtui_end"]) == (4, 9)
    assert entry["constant"] is True and entry["position"] == 1 and entry["order"] == 1
    assert entry["preventRecursion"] is True
    assert not list(path.parent.glob(".*.tmp"))
    assert Lorebook.open(path, "chat-1").memories()[0].memory == MEMORY


def test_lowest_free_uid_and_user_entries_kept(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    Lorebook.open(path, "c").add_memory(MEMORY, (0, 1), EntrySettings())
    data = json.loads(path.read_text())
    user_entry = {**ST_FIELDS, "uid": 2, "comment": "My own note", "content": "Hands off."}
    data["entries"]["2"] = user_entry
    path.write_text(json.dumps(data))
    book = Lorebook.open(path, "c")
    second = book.add_memory(MEMORY, (2, 3), EntrySettings())
    third = book.add_memory(MEMORY, (4, 5), EntrySettings())
    assert (second.uid, third.uid) == (1, 3)
    assert [m.number for m in book.memories()] == [1, 2, 3]
    assert json.loads(path.read_text())["entries"]["2"] == user_entry


def test_foreign_book_is_never_written(tmp_path: Path) -> None:
    path = tmp_path / "Eldoria.json"
    original = json.dumps({"entries": {"0": {**ST_FIELDS, "uid": 0}}})
    path.write_text(original)
    with pytest.raises(BookError, match="did not create"):
        Lorebook.open(path, "c")
    path.write_text("{not json")
    with pytest.raises(BookError, match="not valid JSON"):
        Lorebook.open(path, "c")


@pytest.mark.parametrize(
    ("mode", "constant", "vectorized"),
    [
        (EntryMode.KEYWORD, False, False),
        (EntryMode.CONSTANT, True, False),
        (EntryMode.VECTORIZED, False, True),
    ],
)
def test_modes(tmp_path: Path, mode: EntryMode, constant: bool, vectorized: bool) -> None:
    book = Lorebook.open(tmp_path / "b.json", "c")
    book.add_memory(MEMORY, (0, 1), EntrySettings(mode=mode))
    entry = book.owned_entries()[0]
    assert (entry["constant"], entry["vectorized"]) == (constant, vectorized)


def test_settings_reach_the_entry(tmp_path: Path) -> None:
    ms = MemorySettings(
        memory_position=7,
        memory_outlet="memories",
        memory_order_mode=OrderMode.MANUAL,
        memory_order_value=250,
        memory_prevent_recursion=False,
        memory_delay_until_recursion=True,
        memory_title_format="Memory #00: {{title}} ({{scene}})",
    )
    book = Lorebook.open(tmp_path / "b.json", "c")
    stored = book.add_memory(
        MEMORY, (10, 20), EntrySettings.from_memory(ms), title_format=ms.memory_title_format
    )
    entry = book.owned_entries()[0]
    assert stored.title == "Memory #01: Rooftop Truce (10-20)"
    assert entry["position"] == 7 and entry["outletName"] == "memories"
    assert entry["order"] == 250
    assert entry["preventRecursion"] is False and entry["delayUntilRecursion"] is True


def test_title_formats() -> None:
    assert format_title("[000] - {{title}}", 7, MEMORY) == "[007] - Rooftop Truce"
    assert (
        format_title("{{char}} {0} {{title}}", 12, MEMORY, char="Bob") == "Bob {12} Rooftop Truce"
    )
    assert book_file_name('kvtui - A/B: "x"') == "kvtui - A_B_ _x_.json"


def test_upsert_by_title_replaces_in_place(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    book = Lorebook.open(path, "c")
    uids = set()
    for run in range(3):
        entry = book.upsert_by_title(
            "Plot Points (kvtui SidePrompt)",
            f"state {run}",
            EntrySettings(mode=EntryMode.KEYWORD),
            kind="sideprompt",
            scene=(0, run),
        )
        uids.add(entry["uid"])
    entries = Lorebook.open(path, "c").owned_entries("sideprompt")
    assert len(entries) == 1 and uids == {entries[0]["uid"]}
    assert entries[0]["content"] == "state 2" and entries[0]["kvtui_end"] == 2
    assert Lorebook.open(path, "c").memories() == []
