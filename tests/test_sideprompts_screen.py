"""The side-prompt screen driven by Pilot against the real server and a SillyTavern data dir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Input, Select, TextArea

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama.client import LlamaClient
from kvtui.memory.lorebook import Lorebook
from kvtui.sideprompts.service import SidePromptService
from kvtui.sillytavern.sample import copy_sample
from kvtui.tui.screens.sideprompts import SidePromptsScreen
from kvtui.tui.screens.text_preview import TextPreviewScreen
from tests.sideprompt_helpers import CHAT, make_service, only, tiny


async def wait_for(pilot: Pilot[Any], predicate: Callable[[], bool], what: str) -> None:
    """Let the app run until ``predicate`` holds; a generous bound for a loaded machine."""
    for _ in range(3000):
        if predicate():
            return
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class Host(App[None]):
    def __init__(self, service: SidePromptService) -> None:
        super().__init__()
        self.service = service
        self.screen_under_test = SidePromptsScreen(service, CHAT)

    def on_mount(self) -> None:
        self.push_screen(self.screen_under_test)


def offered(app: App[Any], button: str) -> bool:
    """The shared preview is open with ``button`` usable."""
    modal = app.screen
    return (
        isinstance(modal, TextPreviewScreen)
        and bool(modal.status_text)  # mounted and offered
        and not modal.query_one(button).disabled
    )


def entries(service: SidePromptService) -> list[dict[str, Any]]:
    path = service.book_for(service.find_chat(CHAT))[1]
    return list(Lorebook.open(path, CHAT).entries.values())


async def test_screen_runs_with_and_without_range_and_refuses(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    st_dir = copy_sample(tmp_path / "st")
    async with LlamaClient(clean_server.url, save_dir=clean_server.save_dir) as client:
        service = make_service(client, st_dir, tmp_path / "state")
        only(service, tiny("Tracker"), tiny("Auto", manual=False, after_memory=True))
        app = Host(service)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen_under_test
            await wait_for(pilot, lambda: screen.selected_name == "Tracker", "the list")

            # With a range, edited in the preview before accepting.
            screen.query_one("#sideprompts-range", Input).value = "1-3"
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: offered(app, "#text-preview-accept"), "the preview")
            await pilot.pause()  # laid out before the click
            app.screen.query_one("#text-preview-text", TextArea).text = "Edited by hand."
            await pilot.click("#text-preview-accept")
            await wait_for(pilot, lambda: screen.outcome is not None, "the save")
            assert screen.outcome is not None and screen.outcome.status == "saved"
            assert (screen.outcome.start, screen.outcome.end) == (1, 3)
            assert [e["content"] for e in entries(service)] == ["Edited by hand."]

            # Without a range: the messages since the checkpoint (4-5); cancel writes nothing.
            screen.query_one("#sideprompts-range", Input).value = ""
            screen.preview = None
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: offered(app, "#text-preview-retry"), "the preview")
            await pilot.press("ctrl+t")  # retry: a new reply from the same job runner
            await wait_for(pilot, lambda: screen.preview is not None
                           and screen.preview.attempts == 2
                           and offered(app, "#text-preview-retry"), "the retry")  # fmt: skip
            await pilot.press("escape")
            await wait_for(pilot, lambda: screen.outcome is not None, "the cancel")
            assert screen.outcome is not None and screen.outcome.status == "cancelled"
            assert (screen.outcome.start, screen.outcome.end) == (4, 5)
            assert [e["content"] for e in entries(service)] == ["Edited by hand."]
            assert service.checkpoints.get(CHAT, "tracker") == 3  # a declined manual run

            # A template without manual runs is refused with a clear message.
            screen.select_template("Auto")
            await pilot.pause()
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: screen.outcome is not None, "the refusal")
            assert screen.outcome is not None and screen.outcome.status == "failed"
            assert "does not allow manual runs" in screen.status_text

            # Enable/disable from the list.
            await pilot.press("ctrl+e")
            assert not service.library.get("Auto").enabled


async def test_editor_creates_and_edits_with_a_server_override(tmp_path: Path) -> None:
    from textual.widgets import Checkbox

    from kvtui.tui.screens.sideprompt_editor import SidePromptEditor

    st_dir = copy_sample(tmp_path / "st")
    service = make_service(LlamaClient("http://127.0.0.1:9"), st_dir, tmp_path / "state")
    only(service, tiny("Tracker"))
    app = Host(service)
    async with app.run_test(size=(120, 45)) as pilot:
        screen = app.screen_under_test
        await wait_for(pilot, lambda: screen.selected_name == "Tracker", "the list")
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, SidePromptEditor), "the editor")
        editor = app.screen
        assert isinstance(editor, SidePromptEditor)
        editor.query_one("#editor-model", Input).value = "big"
        await pilot.press("ctrl+s")  # a model without a server is refused; the form stays
        assert isinstance(app.screen, SidePromptEditor) and "server_url" in editor.status_text
        editor.query_one("#editor-server", Input).value = "http://127.0.0.1:8090/"
        editor.query_one("#editor-interval", Input).value = "4"
        editor.query_one("#editor-after", Checkbox).value = True
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen, "the editor to close")
        t = service.library.get("Tracker")
        assert (t.server_url, t.model, t.triggers.interval) == ("http://127.0.0.1:8090", "big", 4)
        assert t.triggers.after_memory and t.prompt == tiny("Tracker").prompt
        assert "@ http://127.0.0.1:8090 (big)" in str(
            screen.query_one("#sideprompts-list").get_option_at_index(0).prompt  # type: ignore[attr-defined]
        )

        await pilot.press("ctrl+n")  # a new one, then Esc: nothing is added
        await wait_for(pilot, lambda: isinstance(app.screen, SidePromptEditor), "a new editor")
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, "the editor to close")
        assert service.library.names() == ["Tracker"]
        await pilot.press("ctrl+n")
        await wait_for(pilot, lambda: isinstance(app.screen, SidePromptEditor), "a new editor")
        app.screen.query_one("#editor-name", Input).value = "Weather"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "Weather" in service.library.names(), "the new template")
        assert not service.library.get("Weather").builtin


async def test_dashboard_key_o_runs_a_side_prompt(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    """From the real dashboard: ``o`` opens the manager on the service's chats; a manual run
    with a range goes through the service's job runner and lands in the chat's book."""
    from kvtui.service import KvService
    from kvtui.settings import load_settings
    from kvtui.sideprompts.templates import template_library
    from kvtui.tui.app import make_app

    st_dir = copy_sample(tmp_path / "st")
    settings = load_settings(tmp_path / "config.toml", server_url=clean_server.url,
                             save_dir=clean_server.save_dir, st_dir=st_dir,
                             state_dir=tmp_path / "state")  # fmt: skip
    library = template_library(settings.state_dir)
    for name in library.names():
        library.delete(name)
    library.add(tiny("Tracker"))
    kv = KvService(settings)
    kv.set_current_chat(CHAT)
    app = make_app(settings, service=kv)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("o")
        await wait_for(pilot, lambda: isinstance(app.screen, SidePromptsScreen), "the screen")
        screen = app.screen
        assert isinstance(screen, SidePromptsScreen)
        await wait_for(pilot, lambda: screen.selected_name == "Tracker", "the list")
        chat = screen.query_one("#sideprompts-chat", Select)
        await wait_for(pilot, lambda: chat.value == CHAT, "the current chat")
        screen.query_one("#sideprompts-range", Input).value = "0-2"
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: offered(app, "#text-preview-accept"), "the preview")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: screen.outcome is not None, "the save")
        assert screen.outcome is not None and screen.outcome.status == "saved"
        assert screen.outcome.mode == "borrowed"  # no memory_slot: a slot borrowed, gate held
        path = screen.service.book_for(screen.service.find_chat(CHAT))[1]
        assert [e["content"] for e in Lorebook.open(path, CHAT).entries.values()] == [
            screen.outcome.text
        ]
