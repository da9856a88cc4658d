"""Scenes, progress, the two-part prompt and the preset manager (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvtui.memory.contract import Memory
from kvtui.memory.library import LibraryError, unique_name
from kvtui.memory.prompt import Preset, build_prompt, preset_library
from kvtui.memory.scene import (
    ProgressStore,
    SceneError,
    default_start,
    parse_range,
    select_scene,
    visible_since,
)
from kvtui.sillytavern import ChatRef, parse_chat_text


def make_chat(metadata: dict[str, object] | None = None) -> str:
    lines: list[dict[str, object]] = [{"chat_metadata": metadata or {}, "user_name": "unused"}]
    lines += [
        {"name": "Alice", "is_user": True, "mes": "Hello {{char}}."},
        {"name": "Bob", "is_user": False, "mes": "Hi Alice."},
        {"name": "Alice", "is_user": True, "is_system": True, "mes": "(hidden)"},
        {"name": "Bob", "is_user": False, "mes": "Let us go."},
        {
            "name": "System",
            "is_user": False,
            "mes": "The night falls.",
            "extra": {"type": "narrator"},
        },
    ]
    return "\n".join(json.dumps(line) for line in lines)


REF = ChatRef("Bob - 2026", Path("Bob - 2026.jsonl"), None, "Bob.png", "Bob")


def test_parse_range() -> None:
    assert parse_range("3-7") == (3, 7)
    assert parse_range("3-") == (3, None)
    assert parse_range(" 4 ") == (4, 4)
    for bad in ("a-b", "7-3", "-3", ""):
        with pytest.raises(SceneError):
            parse_range(bad)


def test_scene_skips_hidden_messages() -> None:
    chat = parse_chat_text(make_chat(), REF)
    scene = select_scene(chat, 0, None, user="Alice", char="Bob")
    assert scene.transcript() == [
        "Alice: Hello {{char}}.",
        "Bob: Hi Alice.",
        "Bob: Let us go.",
        "The night falls.",
    ]
    assert (scene.start, scene.end) == (0, 4)
    assert (visible_since(chat, None), visible_since(chat, 1), visible_since(chat, 4)) == (4, 2, 0)
    with pytest.raises(SceneError, match="hidden"):
        select_scene(chat, 2, 2, user="Alice", char="Bob")
    with pytest.raises(SceneError, match="nothing"):
        select_scene(chat, 9, None, user="Alice", char="Bob")


def test_default_start_prefers_kvtui_then_stmb(tmp_path: Path) -> None:
    progress = ProgressStore(tmp_path / "progress.json")
    fresh = parse_chat_text(make_chat(), REF)
    assert default_start(fresh, progress).source == "start"
    stmb = parse_chat_text(make_chat({"STMemoryBooks": {"highestMemoryProcessed": 1}}), REF)
    point = default_start(stmb, progress)
    assert (point.start, point.source) == (2, "stmb")
    progress.record(REF.chat_id, 0, 3)
    point = default_start(stmb, progress)
    assert (point.start, point.source) == (4, "kvtui")


def test_prompt_has_both_parts_in_order() -> None:
    chat = parse_chat_text(make_chat(), REF)
    scene = select_scene(chat, 0, 1, user="Alice", char="Bob")
    preset = Preset(name="p", prompt="Summarize {{user}} and {{CHAR}} as JSON.")
    earlier = [Memory("Old", "They met.", ("Alice", "met"))]
    built = build_prompt(preset, scene, earlier, [(r"Hi (\w+)", r"Hello \1")])
    text = built.text
    assert text.startswith("Summarize Alice and Bob as JSON.\n\n")
    assert "=== PREVIOUS SCENE CONTEXT (DO NOT SUMMARIZE) ===" in text
    assert "Context 1 - Old:\nThey met.\nKeywords: Alice, met" in text
    head, _, tail = text.partition("=== SCENE TRANSCRIPT ===")
    assert "ONLY THE SCENE BELOW" in head
    assert tail.strip().splitlines() == [
        "Alice: Hello {{char}}.",
        "Bob: Hello Alice.",
        "",
        "=== END SCENE ===",
    ]
    assert "PREVIOUS" not in build_prompt(preset, scene).text


def test_preset_manager(tmp_path: Path) -> None:
    library = preset_library(tmp_path)
    names = library.names()
    assert {"Detailed summary", "Synopsis", "Minimal"} <= set(names)
    library.add(Preset(name="Mine", prompt="Do it."))
    with pytest.raises(LibraryError, match="exists"):
        library.add(Preset(name="mine", prompt="Again."))
    library.update("Mine", prompt="Do it well.")
    library.update("Mine", name="Ours")
    with pytest.raises(LibraryError, match="exists"):
        library.update("Ours", name="synopsis")
    library.update("Ours", name="Mine")
    copy = library.duplicate("Mine")
    assert copy.name == "Mine (copy)" and copy.prompt == "Do it well."
    library.update("Synopsis", prompt="Edited built-in.")
    library.delete("Minimal")
    exported = library.export()

    other = preset_library(tmp_path / "other")
    other.add(Preset(name="Mine", prompt="Theirs."))
    added = other.import_json(exported)
    assert "Mine (2)" in [p.name for p in added]
    assert other.get("Mine").prompt == "Theirs."  # never overwritten
    assert other.get("Mine (2)").prompt == "Do it well."

    library.reset_builtins()
    assert library.get("Synopsis").prompt != "Edited built-in."
    assert library.get("Minimal").builtin
    assert library.get("Mine").prompt == "Do it well."
    assert library.get("Mine (copy)").prompt == "Do it well."
    with pytest.raises(LibraryError, match="No preset"):
        library.get("Nope")


def test_unique_name() -> None:
    assert unique_name("A", ["B"]) == "A"
    assert unique_name("A", ["a", "A (2)"]) == "A (3)"
    assert unique_name("A (2)", ["A (2)"]) == "A (3)"
