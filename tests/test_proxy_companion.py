"""The companion extension's endpoints on the real proxy: events, status and save."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer
from tests.test_proxy import USER, make_settings, running_proxy, st_body, st_prompt

pytestmark = pytest.mark.server

PAGE = {"Origin": "http://127.0.0.1:8000", "Content-Type": "text/plain;charset=UTF-8"}


async def test_open_status_and_save_through_the_companion_endpoints(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with running_proxy(make_settings(clean_server, tmp_path)) as h:
        await h.service.connect()
        opened = {"type": "chat_opened", "chat": "Mira - 2026-05-01", "character": "Mira"}
        resp = await h.client.post("/kvtui/v1/event", content=json.dumps(opened), headers=PAGE)
        assert resp.status_code == 204
        assert h.service.current_chat == "Mira - 2026-05-01"
        body = st_body(st_prompt("Mira", [(USER, "Hello")]), [f"\n{USER}:"])
        body["n_predict"] = 2
        assert (await h.client.post("/completion", json=body)).status_code == 200
        status = await h.client.get(
            "/kvtui/v1/status", params={"chat": "Mira - 2026-05-01", "character": "Mira"},
            headers={"Origin": PAGE["Origin"]},
        )  # fmt: skip
        assert status.status_code == 200
        assert status.headers["access-control-allow-origin"] == PAGE["Origin"]
        answer = status.json()
        assert answer["connected"] is True and answer["slot"] is not None
        save = {"chat": "Mira - 2026-05-01", "character": "Mira", "tag": "keep"}
        resp = await h.client.post("/kvtui/v1/save", content=json.dumps(save), headers=PAGE)
        assert resp.status_code == 200, resp.text
        saved = resp.json()
        assert saved["tag"] == "keep" and saved["n_saved"] > 0
        assert clean_server.save_dir is not None
        assert (clean_server.save_dir / saved["filename"]).is_file()


async def test_companion_refuses_bad_events_and_foreign_pages(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with running_proxy(make_settings(clean_server, tmp_path)) as h:
        for bad in ({"type": "nope", "chat": "x"}, {"type": "chat_opened"}):
            resp = await h.client.post("/kvtui/v1/event", content=json.dumps(bad), headers=PAGE)
            assert resp.status_code == 400
        resp = await h.client.post(
            "/kvtui/v1/save",
            content=json.dumps({"chat": "c", "character": "Nobody"}),
            headers=PAGE,
        )
        assert resp.status_code == 409 and "no slot" in resp.json()["error"]["message"]
        foreign = {**PAGE, "Origin": "https://evil.example"}
        opened = {"type": "chat_opened", "chat": "x"}
        resp = await h.client.post("/kvtui/v1/event", content=json.dumps(opened), headers=foreign)
        assert resp.status_code == 403 and h.service.current_chat != "x"
        assert (await h.client.get("/kvtui/v1/nothing")).status_code == 404
