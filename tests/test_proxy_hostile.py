"""Hostile requests through the real proxy in front of the real server: nothing reaches
llama-server that could wipe a slot, overwrite a save or let a web page drive the slots."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.proxy.run import ProxyServer, ProxyStartError
from kvtui.service import KvService
from kvtui.settings import Settings
from kvtui.slots import GenType
from tests.test_proxy import USER, make_settings, running_proxy, slot_states, st_body, st_prompt

pytestmark = pytest.mark.server


async def _fill(h: Any, server: EmbeddedServer, character: str) -> tuple[int, int]:
    """Route ``character`` to a slot, fill it; returns (slot, tokens in it)."""
    await h.service.connect()
    decision = await h.service.route("chat", character, GenType.NORMAL)
    await h.service.complete(f"{USER}: hi\n{character}:", slot=decision.slot)
    return decision.slot, await _tokens(server, decision.slot)


async def _tokens(server: EmbeddedServer, slot: int) -> int:
    for state in await slot_states(server):
        if state["id"] == slot:
            return int(state.get("n_prompt_tokens") or state.get("n_past") or 0)
    raise AssertionError(f"no slot {slot}")


@pytest.mark.parametrize(
    "raw", ["/slots/0abc", "/slots/0x0", "/slots/+0", "/slots/%30", "/slots/0/"]
)
async def test_odd_slot_ids_never_reach_the_server(
    clean_server: EmbeddedServer, tmp_path: Path, raw: str
) -> None:
    async with running_proxy(make_settings(clean_server, tmp_path)) as h:
        slot, before = await _fill(h, clean_server, "Seraphina")
        assert slot == 0 and before > 0
        resp = await h.client.post(f"{raw}?action=restore", json={"filename": "missing.bin"})
        assert resp.status_code == 400
        assert "not a slot id" in resp.json()["error"]["message"]
        assert await _tokens(clean_server, 0) == before  # llama-server would have wiped slot 0
        assert h.service.book.find("chat", "Seraphina") == 0


async def test_client_save_never_overwrites_and_names_stay_inside(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    save_dir = clean_server.save_dir
    assert save_dir is not None
    async with running_proxy(make_settings(clean_server, tmp_path)) as h:
        await _fill(h, clean_server, "Seraphina")
        tagged = (await h.service.save_slot(0, tag="keep")).filename
        original = (save_dir / tagged).read_bytes()
        await _fill(h, clean_server, "Kael")  # slot 1 holds another character
        resp = await h.client.post("/slots/1?action=save", json={"filename": tagged})
        assert resp.status_code == 400 and "never overwrites" in resp.json()["error"]["message"]
        assert (save_dir / tagged).read_bytes() == original
        for name in ("../x.bin", "a/b.bin", "..", "", ".kvtui-job-1.bin"):
            for action in ("save", "restore"):
                resp = await h.client.post(f"/slots/0?action={action}", json={"filename": name})
                assert resp.status_code == 400, (action, name, resp.text)
        resp = await h.client.post("/slots/0?action=restore", json={})
        assert resp.status_code == 400 and "filename" in resp.json()["error"]["message"]
        assert not (save_dir.parent / "x.bin").exists()


async def test_browser_pages_and_rebinding_hosts_are_refused(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    body = st_body(st_prompt("Seraphina", [(USER, "Hi")]), [f"\n{USER}:"])
    body["n_predict"] = 2
    async with running_proxy(make_settings(clean_server, tmp_path)) as h:
        for headers in ({"Host": "evil.example:8081"}, {"Origin": "https://evil.example"}):
            for method, path, payload in (
                ("POST", "/completion", body),
                ("POST", "/slots/0?action=erase", {}),
                ("GET", "/slots", None),
            ):
                resp = await h.client.request(method, path, json=payload, headers=headers)
                assert resp.status_code == 403, (headers, path)
        # llama-server's permissive CORS answer is not passed on ...
        plain = await h.client.get("/props")
        assert plain.status_code == 200
        assert not any(k.lower().startswith("access-control-") for k in plain.headers)
        # ... but SillyTavern's page (an allowed origin) gets its own.
        page = {"Origin": "http://127.0.0.1:8000"}
        allowed = await h.client.get("/props", headers=page)
        assert allowed.headers["access-control-allow-origin"] == "http://127.0.0.1:8000"
        pre = await h.client.options(
            "/completion", headers={**page, "Access-Control-Request-Method": "POST"}
        )
        assert pre.status_code == 204
        assert pre.headers["access-control-allow-origin"] == "http://127.0.0.1:8000"


async def test_bodies_are_bounded_and_malformed_json_is_a_400(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = make_settings(clean_server, tmp_path, max_body_mb=0.01)  # 10 KiB
    async with running_proxy(settings) as h:
        big = b'{"prompt": "' + b"x" * 20_000 + b'"}'
        resp = await h.client.post("/completion", content=big)
        assert resp.status_code == 413 and "max_body_mb" in resp.json()["error"]["message"]

        async def chunks() -> Any:
            for _ in range(50):
                yield b"x" * 1024

        resp = await h.client.post("/completion", content=chunks())  # no Content-Length
        assert resp.status_code == 413
        for bad in (b'{"prompt": "\\udc00"}', b"[" * 5_000, b'{"prompt": NaN}', b'"x"'):
            resp = await h.client.post("/completion", content=bad)
            assert resp.status_code == 400, bad[:20]
            assert resp.json()["error"]["message"].startswith("kvtui proxy:")
        ok = await h.client.post("/completion", json={"prompt": "Hi", "n_predict": 1})
        assert ok.status_code == 200


async def test_listening_beyond_loopback_needs_a_key(tmp_path: Path) -> None:
    settings = Settings(server_url="http://127.0.0.1:9", state_dir=tmp_path / "state")
    service = KvService(settings)
    try:
        with pytest.raises(ProxyStartError, match="without an API key"):
            await ProxyServer(service, host="0.0.0.0", port=0).start()
    finally:
        await service.aclose()


async def test_concurrent_hostile_and_real_traffic_keeps_the_book(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    """Refusals under load never disturb routed generations."""
    body = st_body(st_prompt("Seraphina", [(USER, "Hi")]), [f"\n{USER}:"])
    body["n_predict"] = 2
    async with running_proxy(make_settings(clean_server, tmp_path)) as h:
        h.service.set_current_chat("chat")

        async def hostile(i: int) -> int:
            resp = await h.client.post(
                f"/slots/{i % 2}x?action=erase", json={}, headers={"Origin": "null"}
            )
            return resp.status_code

        async def real() -> int:
            return (await h.client.post("/completion", json=body)).status_code

        codes = await asyncio.gather(*(hostile(i) for i in range(20)), real(), real())
        assert codes[:20] == [403] * 20 and codes[20:] == [200, 200]
        assert h.service.book.find("chat", "Seraphina") is not None
