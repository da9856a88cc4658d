"""The load picker alone: grouping on screen, choosing one save per character, search, scale."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from textual.app import App
from textual.widgets import Input, Static
from textual.widgets.tree import TreeNode

import kvtui.tui
from kvtui.store import SaveEntry, format_save_name, normalize
from kvtui.tui.screens.load_picker import ChatItem, Choices, LoadPicker, SaveTree

T0 = datetime(2026, 5, 3, 18, 0, tzinfo=UTC)


class Host(App[None]):
    CSS_PATH = Path(kvtui.tui.__file__).parent / "kvtui.tcss"


def entry(chat: str, character: str, minutes: int, tag: str | None = None) -> SaveEntry:
    when = T0 + timedelta(minutes=minutes)
    return SaveEntry(
        filename=format_save_name(chat, character, when, tag),
        chat=chat,
        character=character,
        tag=tag,
        timestamp=when,
        size=3 * 1024 * 1024,
        n_saved=800 + minutes,
        meta=None,
        chat_key=normalize(chat),
        character_key=normalize(character),
    )


ENTRIES = [
    entry("Seraphina chat", "Seraphina", 1),
    entry("Seraphina chat", "Seraphina", 5, tag="важный момент"),
    entry("Forest Party", "Kael", 2),
    entry("Forest Party", "Kael", 9),
    entry("Forest Party", "Mira", 3, tag="end of chapter 1"),
    entry("Old chat", "Brann", -500),
]


def visible_labels(node: TreeNode[Any], depth: int = 0) -> list[str]:
    lines: list[str] = []
    for child in node.children:
        lines.append("  " * depth + str(child.label))
        if child.is_expanded:
            lines += visible_labels(child, depth + 1)
    return lines


def count_nodes(node: TreeNode[Any]) -> int:
    return sum(1 + count_nodes(child) for child in node.children)


def test_choices_keep_one_save_per_character() -> None:
    choices = Choices()
    old, new = entry("c", "Kael", 1), entry("c", "Kael", 2)
    other_chat = entry("d", "Kael", 3)
    assert choices.toggle(old) is None
    assert choices.toggle(new) == old  # replaces the older choice
    assert choices.toggle(other_chat) is None  # same name, other chat: its own choice
    assert [e.filename for e in choices.entries] == [new.filename, other_chat.filename]
    choices.toggle(new)  # un-choose
    assert not choices.is_chosen(new) and len(choices) == 1


async def test_current_chat_first_and_choosing_several_characters() -> None:
    app = Host()
    results: list[list[str] | None] = []
    async with app.run_test(size=(120, 40)) as pilot:
        picker = LoadPicker(ENTRIES, current_chat="Forest Party")
        app.push_screen(picker, results.append)
        await pilot.pause()
        tree = picker.query_one(SaveTree)
        lines = visible_labels(tree.root)
        assert lines[0].startswith("Forest Party [current]")
        # The current chat is open: its characters, newest activity first.
        assert lines[1].startswith("  Kael  2 saves") and lines[2].startswith("  Mira  1 save")
        assert lines[3].startswith("Seraphina chat") and lines[4].startswith("Old chat")
        # Cursor on the chat; down to Kael, space chooses his newest save.
        await pilot.press("down", "space")
        await pilot.pause()
        assert "✓" in str(tree.cursor_node.label if tree.cursor_node else "")
        # Open Kael's saves and choose the older one instead (enter on a save).
        await pilot.press("enter")  # expands Kael
        await pilot.pause()
        await pilot.press("down", "down", "enter")
        await pilot.pause()
        kael = picker.choices.entries
        assert [e.filename for e in kael] == [ENTRIES[2].filename]
        # Open the other chat and choose Seraphina's newest save too.
        tree.select_node(None)
        await pilot.pause()
        seraphina_chat = next(
            n
            for n in tree.root.children
            if isinstance(n.data, ChatItem) and n.data.group.chat == "Seraphina chat"
        )
        tree.move_cursor(seraphina_chat)
        await pilot.press("enter", "down", "space")
        await pilot.pause()
        summary = str(picker.query_one("#picker-summary", Static).content)
        assert summary.startswith("2 chosen: Kael") and "Seraphina" in summary
        await pilot.press("ctrl+l")
        await pilot.pause()
    assert results == [[ENTRIES[2].filename, ENTRIES[1].filename]]


async def test_search_filters_chats_characters_and_tags() -> None:
    app = Host()
    async with app.run_test(size=(120, 40)) as pilot:
        picker = LoadPicker(ENTRIES, current_chat=None)
        app.push_screen(picker)
        await pilot.pause()
        tree = picker.query_one(SaveTree)
        await pilot.press("slash")
        assert isinstance(picker.focused, Input)
        await pilot.press(*"важный")
        await pilot.pause()
        lines = visible_labels(tree.root)
        assert lines[0].startswith("Seraphina chat")
        assert "tag важный момент" in lines[-1] and len(lines) == 3
        picker.query_one(Input).value = "kael"
        await pilot.pause()
        lines = visible_labels(tree.root)
        assert lines[0].startswith("Forest Party") and lines[1].startswith("  Kael  2 saves")
        assert len(lines) == 4  # Kael's two saves, newest first
        assert lines[2] > lines[3]
        picker.query_one(Input).value = "nobody"
        await pilot.pause()
        assert visible_labels(tree.root) == ["No saves match."]
        await pilot.press("enter", "escape")  # back to the tree; Esc clears the search first
        await pilot.pause()
        assert app.screen is picker and picker.query_one(Input).value == ""
        assert visible_labels(tree.root) != ["No saves match."]
        await pilot.press("escape")  # then cancels
        await pilot.pause()
        assert app.screen is not picker


async def test_ten_thousand_saves_build_only_what_is_shown() -> None:
    entries = [
        entry(f"chat {i % 250}", f"character {i % 40}", i, tag="keep" if i % 97 == 0 else None)
        for i in range(10_000)
    ]
    app = Host()
    async with app.run_test(size=(120, 40)) as pilot:
        picker = LoadPicker(entries, current_chat="chat 7")
        app.push_screen(picker)
        await pilot.pause()
        tree = picker.query_one(SaveTree)
        # 250 chat nodes plus the current chat's characters; no save leaves until expanded.
        assert count_nodes(tree.root) < 250 + 40
        assert str(tree.root.children[0].label).startswith("chat 7 [current]")
        picker.query_one(Input).value = "character 3"
        await pilot.pause()
        assert count_nodes(tree.root) < 1000


async def test_chats_show_and_match_their_sillytavern_names() -> None:
    chat_id = "2026-05-03@19h02m11s004ms"
    entries = [entry(chat_id, "Kael", 1), entry("Old chat", "Brann", 2)]
    app = Host()
    async with app.run_test(size=(120, 40)) as pilot:
        picker = LoadPicker(entries, current_chat=chat_id, titles={chat_id: "Forest Party"})
        app.push_screen(picker)
        await pilot.pause()
        tree = picker.query_one(SaveTree)
        assert visible_labels(tree.root)[0].startswith(f"Forest Party  {chat_id} [current]")
        picker.query_one(Input).value = "forest"  # the name, not the id
        await pilot.pause()
        assert [line for line in visible_labels(tree.root) if not line.startswith(" ")] == [
            f"Forest Party  {chat_id} [current]  1 character"
        ]
