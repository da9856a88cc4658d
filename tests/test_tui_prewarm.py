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


async def test_a_cancelled_run_does_not_read_100_percent(tmp_path: Path) -> None:
    from textual.widgets import Input, Label, ProgressBar

    from kvtui.prewarm import CharacterResult, Outcome, Progress
    from kvtui.sillytavern import Member
    from kvtui.tui.screens.prewarm import PrewarmProgress, member_label

    st_dir = copy_sample(tmp_path / "st")
    app = make_app(make_settings(tmp_path, None, st_dir=st_dir, poll_interval=5))
    async with app.run_test(size=SIZE) as pilot:
        screen = PrewarmScreen(app.service, GROUP_CHAT)
        await app.push_screen(screen)
        await wait_until(pilot, lambda: screen.plan is not None, "the plan")
        done = (
            CharacterResult("Seraphina", Outcome.WARMED, tokens=600, seconds=1.0),
            CharacterResult("Kael", Outcome.CANCELLED),
            CharacterResult("Mira", Outcome.CANCELLED),
        )
        screen.post_message(
            PrewarmProgress(Progress(3, None, done, 2.0, finished=True, cancelled=True))
        )
        await pilot.pause()
        bar = screen.query_one("#prewarm-bar", ProgressBar)
        assert bar.total == 3 and bar.progress == 1  # one of three, not 100 %
        assert "Cancelled" in str(screen.query_one("#prewarm-status", Label).content)
        # Esc in the search box clears the search before it closes the screen.
        search = screen.query_one("#prewarm-search", Input)
        search.value = "ka"
        await pilot.pause()
        await pilot.press("escape")
        await pilot.pause()
        assert search.value == "" and app.screen is screen
    # Muted members are marked in words that every theme shows (never only dimmed).
    label = member_label(Member("Brann", "Brann.png", muted=True), "")
    assert "(muted)" in label.plain
    assert all(
        "dim" not in str(span.style)
        for span in label.spans
        if "muted" in label.plain[span.start : span.end]
    )
