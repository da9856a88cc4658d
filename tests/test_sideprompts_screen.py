"""The side-prompt screen driven by Pilot against the real server and a SillyTavern data dir."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Input, TextArea

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama.client import LlamaClient
from kvtui.memory.lorebook import Lorebook
from kvtui.sideprompts.service import SidePromptService
from kvtui.sillytavern.sample import copy_sample
from kvtui.tui.screens.sideprompts import SidePromptsScreen
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


def offered(screen: SidePromptsScreen, button: str) -> bool:
    return screen.preview is not None and not screen.query_one(button).disabled


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
            await wait_for(pilot, lambda: offered(screen, "#sideprompts-accept"), "the preview")
            screen.query_one("#sideprompts-preview", TextArea).text = "Edited by hand."
            await pilot.click("#sideprompts-accept")
            await wait_for(pilot, lambda: screen.outcome is not None, "the save")
            assert screen.outcome is not None and screen.outcome.status == "saved"
            assert (screen.outcome.start, screen.outcome.end) == (1, 3)
            assert [e["content"] for e in entries(service)] == ["Edited by hand."]

            # Without a range: the messages since the checkpoint (4-5); cancel writes nothing.
            screen.query_one("#sideprompts-range", Input).value = ""
            screen.preview = None
            await pilot.press("ctrl+r")
            await wait_for(pilot, lambda: offered(screen, "#sideprompts-retry"), "the preview")
            await pilot.click("#sideprompts-cancel")
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
