"""A server changed in the settings form applies to the proxy's very next request.

The dashboard runs in automatic mode (the proxy in its event loop) against the real embedded
llama-server. The user points kvtui at another address in the settings form: the next request
through the proxy goes there (nothing answers, so the proxy says which address it tried); then
back to the real server, and the next request is answered by it again. No restart in between.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from textual.pilot import Pilot
from textual.widgets import Input

from kvtui.embedded.server import EmbeddedServer, free_port
from kvtui.settings import load_settings
from kvtui.tui.app import KvtuiApp, make_app
from kvtui.tui.screens.dashboard import DashboardScreen
from kvtui.tui.screens.settings_form import SettingsScreen

SIZE = (120, 40)


async def wait_until(pilot: Pilot[Any], predicate: Callable[[], bool], what: str) -> None:
    """Let the app run until ``predicate`` holds (bounded generously; no fixed sleeps)."""
    for _ in range(1500):
        if predicate():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def change_server(pilot: Pilot[Any], app: KvtuiApp, url: str) -> None:
    """Open the settings form, type a new server address, save and apply."""
    await pilot.press("f2")
    await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen), "the settings form")
    app.screen.query_one("#field-server_url", Input).value = url
    await pilot.pause()
    form = app.screen
    assert isinstance(form, SettingsScreen)
    await pilot.press("ctrl+s")
    await wait_until(
        pilot, lambda: isinstance(app.screen, DashboardScreen), f"the dashboard ({form.errors})"
    )
    await app.wait_for_jobs()
    await wait_until(pilot, lambda: app.service.settings.server_url == url, "the new settings")


async def test_the_proxy_follows_a_server_changed_in_the_settings_form(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # a free port: nothing listens there
    settings = load_settings(
        tmp_path / "kvtui.toml",
        server_url=clean_server.url,
        save_dir=clean_server.save_dir,
        state_dir=tmp_path / "state",
        proxy_listen=f"127.0.0.1:{free_port()}",
        poll_interval=5.0,
    )
    app = make_app(settings, config_path=tmp_path / "kvtui.toml", automatic=True)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.proxy is not None, "the proxy")
        assert app.proxy is not None
        async with httpx.AsyncClient(base_url=app.proxy.url, timeout=60) as client:
            before = await client.get("/props")
            assert before.status_code == 200
            assert before.json()["total_slots"] == clean_server.n_slots

            await change_server(pilot, app, nowhere)
            gone = await client.get("/props")
            assert gone.status_code == 502
            assert nowhere in gone.json()["error"]["message"]

            await change_server(pilot, app, clean_server.url)
            back = await client.get("/props")
            assert back.status_code == 200
            assert back.json()["total_slots"] == clean_server.n_slots
            health = await client.get("/health")
            assert health.status_code == 200
