"""The prewarm screen driven by keys against the real server and the demo's sample data."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import RichLog, SelectionList

from kvtui.embedded.server import EmbeddedServer
from kvtui.service import KvService
from kvtui.sillytavern.sample import copy_sample
from kvtui.tui.app import make_app
from kvtui.tui.screens.prewarm import PrewarmScreen, matching
from tests.test_tui_dashboard import SIZE, make_settings, wait_until

GROUP_CHAT = "2026-05-03@19h02m11s004ms"


def test_matching_filters_case_insensitively() -> None:
    from kvtui.sillytavern import Member

    members = (Member("Seraphina", "Seraphina.png"), Member("Kael", "Kael.png", muted=True))
    assert [m.name for m in matching(members, "ka")] == ["Kael"]
    assert len(matching(members, "")) == 2


async def test_prewarm_screen_warms_unmuted_members(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    st_dir = copy_sample(tmp_path / "st")
    settings = make_settings(tmp_path, clean_server, st_dir=st_dir)
    service = KvService(settings)
    app = make_app(settings, service=service)
    async with app.run_test(size=SIZE) as pilot:
        screen = PrewarmScreen(service, GROUP_CHAT)
        await app.push_screen(screen)
        await wait_until(pilot, lambda: screen.plan is not None, "the chat's members")
        members = screen.query_one("#prewarm-members", SelectionList)
        assert members.option_count == 4
        assert len(members.selected) == 3
        assert screen.plan is not None
        muted = [m.name for m in screen.plan.members if m.muted]
        assert len(muted) == 1 and muted[0] not in members.selected

        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: not screen.running, "the run to finish")
        await pilot.pause()
        log_text = "\n".join(line.text for line in screen.query_one("#prewarm-log", RichLog).lines)
        assert log_text.count("✓") == 3, log_text
        status = screen.status_text
        assert status.startswith("Finished"), status

        store = service.require_store()
        store.rescan()
        for name in members.selected:
            assert store.latest(GROUP_CHAT, name) is not None, name
        await pilot.press("escape")
        assert not isinstance(app.screen, PrewarmScreen)
