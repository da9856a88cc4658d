"""The preset manager modal, tested alone: edit, rename, duplicate, delete, export, import."""

from __future__ import annotations

import json
from pathlib import Path

from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Button, Input, OptionList, TextArea

from kvtui.memory.prompt import preset_library
from kvtui.tui.screens.memory_presets import PresetManager


async def act(pilot: Pilot[None], manager: PresetManager, what: str) -> None:
    """Press a button (``#id``) or a key and wait for the manager to report the outcome."""
    manager.status_text = ""
    if what.startswith("#"):
        manager.query_one(what, Button).press()
    else:
        await pilot.press(what)
    for _ in range(1000):
        if manager.status_text:
            return
        await pilot.pause(0.02)
    raise AssertionError(f"no outcome for {what}")


class Host(App[None]):
    def __init__(self, manager: PresetManager) -> None:
        super().__init__()
        self.manager = manager
        self.result: list[str | None] = []

    def on_mount(self) -> None:
        self.push_screen(self.manager, self.result.append)


async def test_preset_manager(tmp_path: Path) -> None:
    library = preset_library(tmp_path / "memory")
    manager = PresetManager(library, "Minimal")
    app = Host(manager)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert manager.query_one("#presets-name", Input).value == "Minimal"
        manager.query_one("#presets-name", Input).value = "Tiny"
        manager.query_one("#presets-prompt", TextArea).text = "Write {{char}}'s memory as JSON."
        await act(pilot, manager, "ctrl+s")
        assert library.get("Tiny").prompt == "Write {{char}}'s memory as JSON."
        assert "Minimal" not in library.names()

        await act(pilot, manager, "#presets-duplicate")
        assert "Tiny (copy)" in library.names()
        await act(pilot, manager, "#presets-delete")
        assert "Tiny (copy)" not in library.names()

        export = tmp_path / "presets.json"
        manager.query_one("#presets-path", Input).value = str(export)
        await act(pilot, manager, "#presets-export")
        assert {p["name"] for p in json.loads(export.read_text())["items"]} == set(library.names())
        await act(pilot, manager, "#presets-import")
        assert "Tiny (2)" in library.names() and library.get("Tiny").prompt.startswith("Write")

        await act(pilot, manager, "#presets-reset")
        assert "Minimal" in library.names() and "Tiny" in library.names()
        listing = manager.query_one("#presets-list", OptionList)
        listing.highlighted = library.names().index("Tiny")
        for _ in range(1000):
            if manager.selected == "Tiny":
                break
            await pilot.pause(0.02)
        assert manager.query_one("#presets-name", Input).value == "Tiny"
        manager.query_one("#presets-name", Input).value = "Synopsis"
        await act(pilot, manager, "ctrl+s")
        assert "error" in manager.query_one("#presets-status").classes  # the name is taken
        await pilot.press("escape")
        await pilot.pause()
    assert app.result and app.result[0] is not None
