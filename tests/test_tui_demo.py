"""The demo's scripted conversation, played through the real proxy on a real 3-slot server.

The demo server has fewer slots than the sample group has speakers, so playing the script must
show routing by the prompt, a swipe answered from the cache, an eviction with a save first, a
restore, and a chat switch — exactly what a newcomer is promised. The same is driven by keys in
the demo's dashboard.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kvtui.demo import DemoPointer, demo_settings, pointer_path, redirect_to_demo, running_demo
from kvtui.demo_script import (
    PARTY,
    SCRIPT,
    SOLO,
    DemoPlayer,
    Turn,
    request_body,
    stop_strings,
)
from kvtui.embedded.server import EmbeddedServer
from kvtui.events import Event, Kind
from kvtui.proxy.run import ProxyServer
from kvtui.service import KvService
from kvtui.settings import Settings
from kvtui.sillytavern import SillyTavernData
from kvtui.sillytavern.sample import copy_sample
from kvtui.tui.app import make_app
from kvtui.tui.screens.demo import DemoScreen
from kvtui.tui.widgets.slot_table import SlotTable

N_SLOTS = 3


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A server shaped like the demo's: 3 slots of 2048 tokens."""
    save_dir = tmp_path_factory.mktemp("demo-saves")
    server = EmbeddedServer(save_dir=save_dir, n_slots=N_SLOTS, n_ctx=2048 * N_SLOTS)
    server.start()
    yield server
    server.stop()


def fresh_settings(server: EmbeddedServer, root: Path) -> Settings:
    assert server.save_dir is not None
    for path in server.save_dir.iterdir():
        path.unlink()
    st_dir = copy_sample(root / "st")
    base = Settings.model_construct(state_dir=root / "user-state", poll_interval=0.2)
    settings = demo_settings(base, root, server.url, st_dir)
    return settings.model_copy(update={"save_dir": server.save_dir, "proxy_listen": "127.0.0.1:1"})


@pytest.fixture
async def running(
    demo_server: EmbeddedServer, tmp_path: Path
) -> AsyncIterator[tuple[KvService, ProxyServer, list[Event]]]:
    settings = fresh_settings(demo_server, tmp_path)
    service = KvService(settings)
    await service.clear_all()
    events: list[Event] = []
    service.events.subscribe(events.append)
    assert settings.st_dir is not None
    proxy = ProxyServer(service, port=0)
    await proxy.start()
    yield service, proxy, events
    await proxy.stop()
    await service.aclose()


def test_requests_are_shaped_as_sillytavern_sends_them() -> None:
    stop = stop_strings("Alex", "Kael", ["Seraphina", "Kael", "Mira", "Brann"], group=True)
    assert stop == ["\nAlex:", "\nSeraphina:", "\nMira:", "\nBrann:", "\n***"]
    assert stop_strings("Alex", "Seraphina", ["Seraphina"], group=False) == ["\nAlex:"]
    body = request_body("…\nKael:", stop, "http://127.0.0.1:8081")
    assert body["prompt"].endswith("\nKael:") and body["stop"] == stop
    assert body["cache_prompt"] is True and body["stream"] is True and "id_slot" not in body
    # The script has more group speakers than the demo has slots, a swipe and a chat switch.
    assert len({s.speaker for s in SCRIPT if s.chat == PARTY}) > N_SLOTS
    assert any(s.turn is Turn.SWIPE for s in SCRIPT)
    assert {s.chat for s in SCRIPT} == {PARTY, SOLO}


async def test_the_script_routes_evicts_restores_and_switches_chats(
    running: tuple[KvService, ProxyServer, list[Event]],
) -> None:
    service, proxy, events = running
    assert service.settings.st_dir is not None
    player = DemoPlayer(service.settings.st_dir, proxy.url)
    seen: list[tuple[int, set[tuple[str | None, str | None]]]] = []
    while not player.finished:
        result = await player.play_next()
        assert result.reply
        snap = await service.refresh()
        seen.append((result.index, {(r.chat, r.character) for r in snap.rows}))
    kinds = [e.kind for e in events]
    messages = [e.message for e in events]
    # Turns 1-3: three group members in three slots, routed by the prompt's last line.
    assert seen[2][1] == {(PARTY, "Seraphina"), (PARTY, "Kael"), (PARTY, "Mira")}
    # Turn 5: Brann needs a slot; the least used member is saved, then evicted.
    assert Kind.EVICT in kinds and Kind.AUTOLOAD in kinds and Kind.CHAT_SWITCH in kinds
    evict = kinds.index(Kind.EVICT)
    assert any(k in (Kind.SAVE, Kind.AUTOSAVE) for k in kinds[:evict])
    assert (PARTY, "Brann") in seen[4][1]
    # Seraphina comes back and is restored from her save.
    assert any(m.startswith("Restored Seraphina") for m in messages)
    # The chat switch to the 1:1 chat, and back to the group (restored from the switch's saves).
    assert any(f"→ {SOLO}" in m for m in messages if m.startswith("Chat switch"))
    assert (SOLO, "Seraphina") in seen[7][1]
    assert seen[-1][1] >= {(PARTY, "Kael"), (PARTY, "Mira")}
    assert any(m.startswith("Restored Mira") for m in messages[-12:])
    # Both chat files grew as SillyTavern's would: Alex's lines and the replies.
    data = SillyTavernData(service.settings.st_dir)
    party = data.find_chat(PARTY)
    assert party is not None
    texts = [m.mes for m in data.read_chat(party).messages]
    assert "Brann, wake up! Breakfast is ready." in texts
    last = json.loads(party.path.read_text(encoding="utf-8").splitlines()[-1])
    assert last["name"] == "Kael" and len(last["swipes"]) == 2 and last["swipe_id"] == 1


async def test_the_demo_dashboard_plays_turns_by_key(
    demo_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = fresh_settings(demo_server, tmp_path)
    app = make_app(settings, demo_slots=N_SLOTS)
    async with app.run_test(size=(80, 24)) as pilot:
        proxy = ProxyServer(app.service, port=0)
        await proxy.start()
        app.proxy = proxy
        screen = app.screen_stack[0]
        assert isinstance(screen, DemoScreen)
        await pilot.press("n")
        for _ in range(500):
            table = screen.query_one(SlotTable)
            cells = [str(table.get_cell(k, "character")) for k in map(str, range(N_SLOTS))
                     if k in table.rows]  # fmt: skip
            if "Seraphina" in cells and screen.player and screen.player.position == 1:
                break
            await pilot.pause(0.02)
        else:
            raise AssertionError("the first turn did not fill a slot")
        assert "Turn 1/" in str(screen.query_one("#demo-line").render())
        # Every demo key and the main actions are in the footer at 80 columns.
        shown = {b.binding.key for b in screen.active_bindings.values() if b.binding.show}
        assert {"n", "g", "question_mark", "q", "s", "l", "f2", "p"} <= shown
        await app.stop_automatic()


def test_headless_commands_find_the_running_demo(tmp_path: Path) -> None:
    user_state = tmp_path / "user-state"
    root = tmp_path / "demo"
    (root / "state").mkdir(parents=True)
    import os

    pointer = DemoPointer(
        os.getpid(), "http://127.0.0.1:9", "http://127.0.0.1:8081", root,
        root / "state", root / "saves", root / "st",
    )  # fmt: skip
    pointer_path(user_state).parent.mkdir(parents=True)
    pointer_path(user_state).write_text(pointer.to_json(), encoding="utf-8")
    settings = Settings.model_construct(state_dir=user_state, server_url="http://127.0.0.1:9")
    redirected, found = redirect_to_demo(settings)
    assert found == pointer and redirected.state_dir == root / "state"
    assert redirected.save_dir == root / "saves"
    # Another server: not the demo's business.
    other = settings.model_copy(update={"server_url": "http://127.0.0.1:8080"})
    assert redirect_to_demo(other) == (other, None)
    # A demo that is gone leaves no ghost: its pointer is removed.
    dead: dict[str, Any] = json.loads(pointer.to_json()) | {"pid": 2**22 + 12345}
    pointer_path(user_state).write_text(json.dumps(dead), encoding="utf-8")
    assert running_demo(user_state) is None and not pointer_path(user_state).exists()


def test_a_taken_proxy_port_moves_the_demo_to_a_free_one() -> None:
    import socket

    from kvtui.demo import _free_listen

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings.model_construct(proxy_listen=f"127.0.0.1:{port}")
        listen, moved = _free_listen(settings)
        assert moved and listen.startswith("127.0.0.1:") and listen != f"127.0.0.1:{port}"
    listen, moved = _free_listen(settings)  # free again: kept as configured
    assert (listen, moved) == (f"127.0.0.1:{port}", False)
