"""The dashboard driven by keys against the real embedded llama-server.

Each test fills slots with real completions, presses the keys a user presses, and checks what the
screen shows and what landed in the save directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.message import Message
from textual.notifications import Notify
from textual.pilot import Pilot
from textual.widgets import Input, Static

from kvtui.embedded.server import EmbeddedServer, free_port
from kvtui.service import KvService, ServiceError
from kvtui.settings import Settings, load_settings
from kvtui.tui.app import KvtuiApp, make_app
from kvtui.tui.screens.assign_dialog import AssignDialog
from kvtui.tui.screens.confirm import ConfirmModal
from kvtui.tui.screens.dashboard import DashboardScreen
from kvtui.tui.screens.error import ErrorModal
from kvtui.tui.screens.load_picker import LoadPicker
from kvtui.tui.screens.settings_form import SettingsScreen
from kvtui.tui.screens.tag_dialog import TagDialog
from kvtui.tui.widgets.server_info import ServerInfo
from kvtui.tui.widgets.slot_table import SlotTable

PROMPT = "Alex: Hello there, where are we going today?\nSeraphina:"
SIZE = (120, 40)


def make_settings(tmp_path: Path, server: EmbeddedServer | None, **changes: object) -> Settings:
    overrides: dict[str, object] = {
        "server_url": server.url if server else f"http://127.0.0.1:{free_port()}",
        "save_dir": server.save_dir if server else tmp_path / "saves",
        "state_dir": tmp_path / "state",
        "poll_interval": 0.2,
    }
    overrides.update(changes)
    return load_settings(tmp_path / "config.toml", **overrides)


async def wait_until(pilot: Pilot[Any], predicate: Callable[[], bool], what: str) -> None:
    """Let the app run until ``predicate`` holds (polls and workers need a few turns)."""
    for _ in range(400):
        if predicate():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def settle(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, KvtuiApp)
    await app.wait_for_jobs()
    await pilot.pause()


def dashboard(app: KvtuiApp) -> DashboardScreen:
    screen = app.screen_stack[0]
    assert isinstance(screen, DashboardScreen)
    return screen


def cell(app: KvtuiApp, slot: int, column: str) -> str:
    """A cell's text, or "" while the row is not there yet."""
    table = dashboard(app).query_one(SlotTable)
    return str(table.get_cell(str(slot), column)) if str(slot) in table.rows else ""


def files(directory: Path, pattern: str = "*.bin") -> list[Path]:
    return sorted(directory.glob(pattern))


def toasts(messages: list[Message]) -> list[str]:
    return [m.notification.message for m in messages if isinstance(m, Notify)]


async def type_into(pilot: Pilot[Any], text: str) -> None:
    await pilot.press(*text)
    await pilot.pause()


@pytest.mark.server
async def test_assign_save_with_tag_erase_and_load_back(
    clean_server: EmbeddedServer, save_dir: Path, tmp_path: Path
) -> None:
    app = make_app(make_settings(tmp_path, clean_server))
    filled = await app.service.client.completion(PROMPT, n_predict=1, id_slot=0)
    messages: list[Message] = []
    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        await wait_until(pilot, lambda: dashboard(app).query_one(SlotTable).row_count == 4, "rows")
        assert "connected" in str(dashboard(app).query_one(ServerInfo).content)

        # c: assign a chat and a character to slot 0 (the cursor starts there).
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, AssignDialog), "assign dialog")
        await type_into(pilot, "Forest Party")
        await pilot.press("enter")
        await type_into(pilot, "Seraphina")
        await pilot.press("enter")
        await settle(pilot)
        await wait_until(pilot, lambda: cell(app, 0, "character") == "Seraphina", "assignment")
        assert cell(app, 0, "chat") == "Forest Party"

        # t: save every active character with a tag (the seed's example tag, spaces and all).
        await pilot.press("t")
        await wait_until(pilot, lambda: isinstance(app.screen, TagDialog), "tag dialog")
        await type_into(pilot, "важный момент")
        await pilot.press("enter")
        await settle(pilot)
        [saved] = files(save_dir, "Forest_Party_*_tag_важный_момент_character_Seraphina.bin")
        assert saved.stat().st_size > 0
        assert any("Seraphina (slot 0)" in t for t in toasts(messages))
        # The job reports once; the service's own "Saved …" event is not toasted again.
        assert not any(t.startswith("Saved Seraphina") for t in toasts(messages))
        await wait_until(pilot, lambda: cell(app, 0, "last_save") != "—", "last save time")

        # e: erase slot 0 (after confirming): the server's slot is empty, the file stays.
        await pilot.press("e")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal), "confirm")
        await pilot.press("y")
        await settle(pilot)
        slots = await app.service.client.slots()
        assert slots[0].n_prompt_tokens in (0, None)
        await wait_until(pilot, lambda: cell(app, 0, "character") == "—", "erased row")
        assert saved.exists()

        # l: the picker lists the chat; choose Seraphina's newest save and load it.
        await pilot.press("l")
        await wait_until(pilot, lambda: isinstance(app.screen, LoadPicker), "picker")
        picker = app.screen
        assert isinstance(picker, LoadPicker)
        await pilot.press("enter", "down")  # expand "Forest Party", go to Seraphina
        await pilot.pause()
        await pilot.press("space", "ctrl+l")
        await settle(pilot)
        await wait_until(pilot, lambda: cell(app, 0, "character") == "Seraphina", "loaded row")
        assert any(t.startswith("Seraphina → slot 0") for t in toasts(messages))
        slots = await app.service.client.slots()
        assert slots[0].n_prompt_tokens == filled.timings.prompt_n + filled.timings.cache_n
    assert app.return_code in (None, 0)


@pytest.mark.server
async def test_save_slot_save_now_and_clear_all(
    clean_server: EmbeddedServer, save_dir: Path, tmp_path: Path
) -> None:
    service = KvService(make_settings(tmp_path, clean_server))
    app = make_app(service.settings, service=service)
    for slot, name in ((1, "Kael"), (2, "Mira")):
        await service.client.completion(PROMPT.replace("Seraphina", name), id_slot=slot)
        await service.assign(slot, "Forest Party", name)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: cell(app, 2, "character") == "Mira", "rows")
        await pilot.press("down", "s")  # save slot 1 only
        await settle(pilot)
        assert [p.name.split("_character_")[1] for p in files(save_dir)] == ["Kael.bin"]
        await pilot.press("a")  # save now: everyone, untagged
        await settle(pilot)
        # Kael's cache is unchanged since his slot save: not written a second time.
        assert len(files(save_dir, "*_character_Kael.bin")) == 1
        assert len(files(save_dir, "*_character_Mira.bin")) == 1
        assert not files(save_dir, "*_tag_*")
        await pilot.press("x")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmModal), "confirm")
        await pilot.press("y")
        await settle(pilot)
        await wait_until(pilot, lambda: cell(app, 1, "character") == "—", "cleared rows")
        assert all(s.n_prompt_tokens in (0, None) for s in await service.client.slots())
        assert len(files(save_dir)) == 2  # caches on disk stay


@pytest.mark.server
async def test_rows_update_in_place_and_cursor_stays(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    app = make_app(make_settings(tmp_path, clean_server, poll_interval=0.1))
    async with app.run_test(size=SIZE) as pilot:
        table = dashboard(app).query_one(SlotTable)
        await wait_until(pilot, lambda: table.row_count == 4, "rows")
        await pilot.press("down", "down")
        keys_before = list(table.rows)
        first = dashboard(app).snapshot
        await app.service.client.completion(PROMPT, id_slot=3)
        await wait_until(pilot, lambda: dashboard(app).snapshot is not first, "a new poll")
        await wait_until(pilot, lambda: cell(app, 3, "tokens").split(" /")[0] != "—", "tokens")
        assert table.cursor_row == 2 and list(table.rows) == keys_before


async def test_unreachable_server_is_shown_and_retried(tmp_path: Path) -> None:
    app = make_app(make_settings(tmp_path, None, poll_interval=0.1))
    async with app.run_test(size=SIZE) as pilot:
        info = dashboard(app).query_one(ServerInfo)
        await wait_until(pilot, lambda: "attempt 2" in str(info.content), "a second attempt")
        text = str(info.content)
        assert "unreachable, retrying" in text
        assert info.has_class("status-unreachable")
        assert dashboard(app).query_one(SlotTable).has_class("stale")
        # Actions that need the server fail with a message, never a traceback.
        await pilot.press("x", "y")
        await settle(pilot)
        assert isinstance(app.screen, DashboardScreen)


async def test_settings_are_saved_and_applied(tmp_path: Path) -> None:
    config = tmp_path / "kvtui.toml"
    settings = make_settings(tmp_path, None, poll_interval=0.1)
    app = make_app(settings, config_path=config)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f2")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen), "settings")
        form = app.screen
        form.query_one("#field-autosave_every", Input).value = "3"
        form.query_one("#field-keymap", Input).value = "refresh=f5"
        await pilot.pause()
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert isinstance(app.screen, DashboardScreen)
        assert app.service.settings.autosave_every == 3
        text = config.read_text()
        assert "autosave_every = 3" in text and 'refresh = "f5"' in text
        rows = {row[0]: row[1] for row in dashboard(app).help_rows()}
        assert rows["refresh"] == "f5"


async def test_every_action_is_in_the_command_palette(tmp_path: Path) -> None:
    app = make_app(make_settings(tmp_path, None, poll_interval=5))
    async with app.run_test(size=SIZE):
        titles = {command.title for command in app.get_system_commands(app.screen)}
        for binding in DashboardScreen.palette_bindings():
            assert binding.description in titles
            assert binding.id == binding.action


async def test_worker_errors_become_a_toast_or_an_error_modal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(make_settings(tmp_path, None, poll_interval=5))
    app.service.book.resize(4)  # no server: the rows come from kvtui's own book
    app.service.book.assign(0, "chat", "Alice")
    messages: list[Message] = []

    async def refused(slot: int) -> int:
        raise ServiceError(f"Slot {slot} does not exist: the server has slots 0 to 3.")

    async def broken(slot: int) -> int:
        raise RuntimeError("a bug in kvtui")

    async with app.run_test(size=SIZE, message_hook=messages.append) as pilot:
        await wait_until(pilot, lambda: cell(app, 0, "character") == "Alice", "rows")
        monkeypatch.setattr(app.service, "erase", refused)
        await pilot.press("e", "y")
        await settle(pilot)
        assert any("does not exist" in t for t in toasts(messages))
        assert isinstance(app.screen, DashboardScreen)
        monkeypatch.setattr(app.service, "erase", broken)
        await pilot.press("e", "y")
        await settle(pilot)
        assert isinstance(app.screen, ErrorModal)
        details = app.screen.query_one(".error-details Static", Static)
        assert "RuntimeError: a bug in kvtui" in str(details.content)
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, DashboardScreen)
