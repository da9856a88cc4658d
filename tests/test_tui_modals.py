"""Each dialog alone, in a throwaway host app: keys in, the dismissed value out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.app import App
from textual.screen import Screen
from textual.widgets import Input, Label, OptionList, Static

import kvtui.tui
from kvtui.settings import Settings
from kvtui.tui.lookups import AssignSuggestions
from kvtui.tui.screens.assign_dialog import AssignDialog, Assignment
from kvtui.tui.screens.confirm import ConfirmModal
from kvtui.tui.screens.help import HelpScreen
from kvtui.tui.screens.settings_form import SettingsScreen
from kvtui.tui.screens.tag_dialog import TagDialog

CSS = Path(kvtui.tui.__file__).parent / "kvtui.tcss"


class Host(App[None]):
    CSS_PATH = CSS


async def run_modal(screen: Screen[Any], *keys: str) -> tuple[Host, list[Any]]:
    """Push ``screen`` on a host app, press ``keys``, return what it dismissed with."""
    app = Host()
    results: list[Any] = []
    async with app.run_test(size=(120, 40)) as pilot:
        app.push_screen(screen, results.append)
        await pilot.pause()
        await pilot.press(*keys)
        await pilot.pause()
    return app, results


async def test_confirm_yes_no_escape() -> None:
    assert (await run_modal(ConfirmModal("Erase", "Erase slot 1?"), "y"))[1] == [True]
    assert (await run_modal(ConfirmModal("Erase", "Erase slot 1?"), "n"))[1] == [False]
    assert (await run_modal(ConfirmModal("Erase", "Erase slot 1?"), "escape"))[1] == [False]
    # The focused button is "No": enter must not erase anything.
    assert (await run_modal(ConfirmModal("Erase", "Erase slot 1?"), "enter"))[1] == [False]


async def test_tag_dialog_returns_the_tag_and_refuses_an_empty_one() -> None:
    app = Host()
    results: list[str | None] = []
    async with app.run_test(size=(120, 40)) as pilot:
        dialog = TagDialog(["Seraphina", "Kael"])
        app.push_screen(dialog, results.append)
        await pilot.pause()
        await pilot.press("enter")
        await pilot.pause()
        assert results == []
        assert "at least one letter" in str(dialog.query_one("#tag-error", Label).content)
        await pilot.press(*"конец главы 1")
        await pilot.pause()
        preview = str(dialog.query_one("#tag-preview", Static).content)
        assert "конец_главы_1" in preview and "Seraphina, Kael" in preview
        await pilot.press("enter")
        await pilot.pause()
    assert results == ["конец главы 1"]
    assert (await run_modal(TagDialog(), "a", "escape"))[1] == [None]


async def test_assign_dialog_completes_chat_and_member_names() -> None:
    suggestions = AssignSuggestions(
        chats=("Seraphina - 2026", "Forest Party chat"),
        characters=("Brann", "Kael", "Mira", "Seraphina"),
        members={"Forest Party chat": ("Seraphina", "Kael", "Mira", "Brann")},
    )
    app = Host()
    results: list[Assignment | None] = []
    async with app.run_test(size=(120, 40)) as pilot:
        dialog = AssignDialog(3, suggestions=suggestions)
        app.push_screen(dialog, results.append)
        await pilot.pause()
        await pilot.press("enter", "enter")  # submitting empty fields explains what is missing
        await pilot.pause()
        assert "Give a chat and a character" in str(
            dialog.query_one("#assign-error", Label).content
        )
        dialog.query_one("#chat", Input).focus()
        await pilot.press(*"fo")
        await pilot.pause()
        await pilot.press("right", "enter")  # accept the suggestion, go to the character
        await pilot.pause()
        assert dialog.query_one("#chat", Input).value == "Forest Party chat"
        assert "In this chat: Seraphina, Kael, Mira, Brann" in str(
            dialog.query_one("#assign-hint", Label).content
        )
        await pilot.press("k")
        await pilot.pause()
        await pilot.press("right", "enter")
        await pilot.pause()
    assert results == [Assignment(3, "Forest Party chat", "Kael")]
    _, cancelled = await run_modal(AssignDialog(0, chat="c", character="x"), "escape")
    assert cancelled == [None]


async def test_settings_form_validates_inline_and_returns_new_settings() -> None:
    settings = Settings.model_construct(state_dir=Path("/var/lib/kvtui"))
    app = Host()
    results: list[Settings | None] = []
    async with app.run_test(size=(120, 40)) as pilot:
        form = SettingsScreen(settings)
        app.push_screen(form, results.append)
        await pilot.pause()
        poll = form.query_one("#field-poll_interval", Input)
        poll.value = "0"
        await pilot.pause()
        error = form.query_one("#error-poll_interval", Label)
        assert str(error.content) == "Must be at least 0.1."
        assert form.query_one("#setting-poll_interval").has_class("invalid")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert results == [] and form.focused is poll
        poll.value = "2.5"
        form.query_one("#field-keymap", Input).value = "save_slot=ctrl+s"
        form.query_one("#field-notifications").toggle()  # type: ignore[attr-defined]
        await pilot.pause()
        assert str(error.content) == ""
        await pilot.press("ctrl+s")
        await pilot.pause()
    [new] = results
    assert new is not None and new is not settings
    assert new.poll_interval == 2.5 and new.notifications is False
    assert new.keymap == {"save_slot": "ctrl+s"}
    assert settings.poll_interval == 1.0  # the old settings object is untouched
    assert (await run_modal(SettingsScreen(settings), "escape"))[1] == [None]


async def test_settings_form_reads_like_the_extension_and_asks_before_discarding(
    tmp_path: Path,
) -> None:
    settings = Settings.model_construct(state_dir=tmp_path / "state")
    app = Host()
    results: list[Settings | None] = []
    async with app.run_test(size=(80, 24)) as pilot:
        form = SettingsScreen(settings)
        app.push_screen(form, results.append)
        await pilot.pause()
        # The seed's six settings first, the focus on the first, values as typed.
        names = [w.id.removeprefix("setting-") for w in form.query(".setting") if w.id]
        assert names[:6] == [
            "autosave_enabled", "autosave_every", "max_autosaves", "notifications",
            "clear_on_chat_switch", "prewarm_timeout_minutes",
        ]  # fmt: skip
        assert form.focused is form.query_one("#field-autosave_enabled")
        assert form.query_one("#field-prewarm_timeout_minutes", Input).value == "20"
        label = form.query_one("#setting-autosave_every .setting-name", Label)
        assert str(label.content) == "Save every N messages  autosave_every"
        # An "off" switch says so in words.
        form.query_one("#field-notifications").toggle()  # type: ignore[attr-defined]
        await pilot.pause()
        assert str(form.query_one("#state-notifications", Label).content) == "off"
        # Folders are checked, in plain words.
        save_dir = form.query_one("#field-save_dir", Input)
        save_dir.value = str(tmp_path / "missing")
        await pilot.pause()
        error = str(form.query_one("#error-save_dir", Label).content)
        assert error == f"There is no folder {tmp_path / 'missing'}."
        save_dir.value = str(tmp_path)
        form.query_one("#field-autosave_every", Input).value = "abc"
        await pilot.pause()
        assert str(form.query_one("#error-save_dir", Label).content) == ""
        assert str(form.query_one("#error-autosave_every", Label).content) == (
            "Type a whole number, e.g. 5."
        )
        # Esc with edits asks; "n" keeps the form and the edits.
        await pilot.press("escape")
        await pilot.pause()
        assert type(app.screen) is ConfirmModal
        await pilot.press("n")
        await pilot.pause()
        screen: object = app.screen
        assert screen is form and results == []
        assert save_dir.value == str(tmp_path)
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("y")
        await pilot.pause()
    assert results == [None]


async def test_help_lists_ids_and_keys() -> None:
    app = Host()
    async with app.run_test(size=(120, 40)) as pilot:
        help_screen = HelpScreen([("save_slot", "s", "Save slot", "Save the selected slot.")])
        app.push_screen(help_screen)
        await pilot.pause()
        assert app.screen is help_screen
        await pilot.press("escape")
        await pilot.pause()
        assert app.screen is not help_screen


async def test_assign_dialog_lists_chats_by_name_and_fills_the_id() -> None:
    suggestions = AssignSuggestions(
        chats=("2026-05-03@19h02m11s004ms", "Seraphina - 2026-05-03@18h45m46s123ms"),
        characters=("Kael", "Seraphina"),
        members={
            "2026-05-03@19h02m11s004ms": ("Seraphina", "Kael"),
            "Seraphina - 2026-05-03@18h45m46s123ms": ("Seraphina",),
        },
        titles={
            "2026-05-03@19h02m11s004ms": "Forest Party",
            "Seraphina - 2026-05-03@18h45m46s123ms": "Seraphina",
        },
    )
    app = Host()
    results: list[Assignment | None] = []
    async with app.run_test(size=(120, 40)) as pilot:
        dialog = AssignDialog(1, suggestions=suggestions)
        app.push_screen(dialog, results.append)
        await pilot.pause()
        choices = dialog.query_one("#chat-choices", OptionList)
        assert choices.option_count == 2
        await pilot.press(*"forest")
        await pilot.pause()
        assert choices.option_count == 1
        assert "Forest Party" in str(choices.get_option_at_index(0).prompt)
        await pilot.press("down", "enter")  # into the list, pick the group chat
        await pilot.pause()
        assert dialog.query_one("#chat", Input).value == "2026-05-03@19h02m11s004ms"
        assert not choices.display
        await pilot.press(*"Kael", "enter")
        await pilot.pause()
    assert results == [Assignment(1, "2026-05-03@19h02m11s004ms", "Kael")]
    # Typing a chat's name in full works too: it becomes the chat id.
    assert suggestions.resolve_chat("forest party") == "2026-05-03@19h02m11s004ms"
    assert suggestions.resolve_chat("a chat kvtui never saw") == "a chat kvtui never saw"


async def test_event_log_rewraps_on_resize_and_stays_at_the_newest_line() -> None:
    from kvtui.events import Event, Kind
    from kvtui.tui.widgets.event_log import EventLogPanel

    class LogHost(Host):
        def compose(self) -> Any:
            yield EventLogPanel(id="events")

    app = LogHost()
    async with app.run_test(size=(120, 24)) as pilot:
        log = app.query_one(EventLogPanel)
        log.titles = {"2026-05-03@19h02m11s004ms": "Forest Party"}
        for i in range(40):
            log.add_event(Event(Kind.ROUTE, f"Kael (2026-05-03@19h02m11s004ms) → slot {i}. " * 3))
        await pilot.pause()
        wide_lines = len(log.lines)
        await pilot.resize_terminal(60, 24)
        for _ in range(50):
            await pilot.pause()
            if len(log.lines) > wide_lines and log.scroll_y == log.max_scroll_y:
                break
        assert len(log.lines) > wide_lines  # wrapped again at the new width
        width = log.scrollable_content_region.width
        assert all(line.cell_length <= width for line in log.lines)
        assert log.scroll_y == log.max_scroll_y > 0  # still showing the newest line
        assert "Forest Party" in "".join(seg.text for seg in log.lines[-1])
        assert "2026-05-03@19h02m11s004ms" not in "".join(
            seg.text for line in log.lines for seg in line
        )
