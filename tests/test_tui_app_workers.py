"""The app's background loops are Textual workers: grouped, reported, cancelled on exit."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer, free_port
from kvtui.service import KvService, ServiceError
from kvtui.sillytavern.sample import copy_sample
from kvtui.tui.app import WATCHERS, make_app
from kvtui.tui.screens.error import ErrorModal
from tests.test_tui_dashboard import SIZE, make_settings, wait_until


async def test_the_watchers_are_workers_that_stop_with_the_app(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    st_dir = copy_sample(tmp_path / "st")
    settings = make_settings(
        tmp_path, clean_server, st_dir=st_dir, proxy_listen=f"127.0.0.1:{free_port()}"
    )
    app = make_app(settings, automatic=True)
    async with app.run_test(size=SIZE) as pilot:
        names = {"kvtui-save-watcher", "kvtui-chat-watcher", "kvtui-sideprompts"}
        await wait_until(pilot, lambda: {w.name for w in app.watchers} == names, "the watchers")
        assert all(w.group == WATCHERS and w.is_running for w in app.watchers)
        await app.wait_for_jobs()  # returns although the watchers run on
        assert {w.name for w in app.watchers} == names
        tasks = [w._task for w in app.watchers]  # noqa: SLF001 - to check they end
    assert all(t is not None and t.done() for t in tasks)


@pytest.mark.parametrize("expected", [True, False])
async def test_a_failing_watcher_is_reported_and_a_bug_shows_its_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expected: bool
) -> None:
    async def broken(self: KvService, stop_event: asyncio.Event) -> None:
        if expected:
            raise ServiceError("The save directory went away.")
        raise ValueError("a bug in the watcher")

    monkeypatch.setattr(KvService, "watch_saves", broken)
    app = make_app(make_settings(tmp_path, None))
    async with app.run_test(size=SIZE) as pilot:

        def logged() -> list[str]:
            return [
                e.message for e in app.service.events.recent() if "watcher stopped" in e.message
            ]

        await wait_until(pilot, lambda: bool(logged()), "the failure in the event log")
        assert logged()[0].startswith("The save-directory watcher stopped: ")
        assert app.is_running  # exit_on_error=False: the dashboard goes on
        if expected:
            assert logged() == ["The save-directory watcher stopped: The save directory went away."]
            await pilot.pause()
            assert not isinstance(app.screen, ErrorModal)
        else:
            assert "ValueError('a bug in the watcher')" in logged()[0]
            await wait_until(pilot, lambda: isinstance(app.screen, ErrorModal), "the bug modal")
