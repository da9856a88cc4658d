"""Every hostile request the issue lists, and truncated, garbage, empty and symlinked save files,
against the real proxy and server with two warm, saved characters. Each request or file is one
case: it must be refused with a 4xx (or a clear one-line error), and afterwards both characters'
slots must still hold their caches and every save must be as it was.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.errors import KvtuiError
from kvtui.settings import Settings
from kvtui.store import SaveStore
from tests.faults.conftest import SLOT_CTX, Case, fault_case
from tests.faults.helpers import (
    CHAT,
    audit,
    holds,
    reset,
    restores_own_cache,
    saves_of,
    slot_tokens,
    warm_and_save,
)
from tests.test_proxy import Harness, running_proxy, st_body

pytestmark = pytest.mark.server

BROWSER = {"Origin": "https://evil.example"}
GEN = st_body("Alex: hi\nMira:", ["\nAlex:"], n_predict=1)
"""A generation a web page (or a rebinding host) would like to run."""


def hostile_requests(good_save: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(case, method, path, request options): every form the issue names."""
    restore_missing = {"json": {"filename": "missing.bin"}}
    odd_ids = ["0abc", "0x0", "+0", "%30", "0/", "%200", "-0", "1e0", "0.0", "%D9%A0", "00"]
    cases: list[tuple[str, str, str, dict[str, Any]]] = [
        (f"slot id {raw!r}", "POST", f"/slots/{raw}?action=restore", restore_missing)
        for raw in odd_ids
    ]
    restore0, restore1 = "/slots/0?action=restore", "/slots/1?action=restore"
    erase0, erase1, gen = "/slots/0?action=erase", "/slots/1?action=erase", "/completion"

    def named(filename: str) -> dict[str, Any]:
        return {"json": {"filename": filename}}

    def sent(headers: dict[str, str], body: object) -> dict[str, Any]:
        return {"json": body, "headers": headers}

    def raw(content: bytes) -> dict[str, Any]:
        return {"content": content}

    cases += [
        ("save over an existing save", "POST", "/slots/1?action=save", named(good_save)),
        ("restore ../x.bin", "POST", restore0, named("../x.bin")),
        ("restore a/b.bin", "POST", restore0, named("a/b.bin")),
        ("restore /etc/passwd", "POST", restore0, named("/etc/passwd")),
        ("restore a private file", "POST", restore0, named(".kvtui-job-1.bin")),
        ("restore without a filename", "POST", restore0, {"json": {}}),
        ("save to ../escape.bin", "POST", "/slots/0?action=save", named("../escape.bin")),
        ("rebinding Host: erase", "POST", erase0, sent({"Host": "evil.example:8081"}, {})),
        ("rebinding Host: generation", "POST", gen, sent({"Host": "rebind.attacker.test"}, GEN)),
        ("foreign Origin: erase", "POST", erase0, sent(BROWSER, {})),
        ("foreign Origin: restore", "POST", restore1, sent(BROWSER, {"filename": good_save})),
        ("foreign Origin: generation", "POST", gen, sent(BROWSER, GEN)),
        ("Origin null: erase", "POST", erase1, sent({"Origin": "null"}, {})),
        ("body over the limit", "POST", gen, raw(b'{"prompt": "' + b"x" * 40_000 + b'"}')),
        ("lone surrogate", "POST", gen, raw(b'{"prompt": "\\udc00", "id_slot": 0}')),
        ("absurdly nested JSON", "POST", gen, raw(b"[" * 5000)),
        ("NaN in JSON", "POST", gen, raw(b'{"prompt": NaN}')),
        ("a JSON string, not an object", "POST", erase0, raw(b'"x"')),
        ("not JSON at all", "POST", restore0, raw(b"filename=x.bin")),
    ]
    return cases


@pytest.fixture
async def harness(fault_llama: EmbeddedServer, tmp_path: Path) -> AsyncIterator[Harness]:
    reset(fault_llama)
    settings = Settings(
        server_url=fault_llama.url,
        save_dir=fault_llama.save_dir,
        state_dir=tmp_path / "state",
        max_body_mb=0.02,
    )
    async with running_proxy(settings) as h:
        await h.service.connect()
        h.service.set_current_chat(CHAT)
        yield h


async def check_nothing_changed(
    h: Harness,
    case: Case,
    before: dict[str, bytes],
    expected: dict[str, list[int]],
    *,
    planted: bool = False,
) -> None:
    save_dir = h.service.require_store().directory
    case.lost = audit(save_dir, before, n_ctx=SLOT_CTX, planted=planted)
    for character, want in expected.items():
        slot = h.service.resident_slot(CHAT, character)
        if slot is None or not holds(await slot_tokens(h.service.client, slot, save_dir), want):
            case.wiped += 1


async def test_hostile_requests_change_nothing(harness: Harness) -> None:
    h = harness
    expected = {
        "Mira": await warm_and_save(h.service, "Mira", 300),
        "Kael": await warm_and_save(h.service, "Kael", 300),
    }
    save_dir = h.service.require_store().directory
    before = saves_of(save_dir)
    good = next(name for name in before if "Kael" in name)
    for name, method, path, options in hostile_requests(good):
        async with fault_case(f"hostile: {name}") as case:
            resp = await h.client.request(method, path, **options)
            assert 400 <= resp.status_code < 500, (name, resp.status_code, resp.text)
            assert not any(k.lower().startswith("access-control-") for k in resp.headers)
            await check_nothing_changed(h, case, before, expected)
    assert not (save_dir.parent / "escape.bin").exists()
    async with fault_case("hostile: no API key where one is configured") as case:
        keyed = h.service.settings.model_copy(update={"api_key": "s3cret"})
        await h.service.apply_settings(keyed)
        try:
            resp = await h.client.post("/slots/0?action=erase", json={})
            assert resp.status_code == 401, resp.text
            resp = await h.client.post("/completion", json=GEN)
            assert resp.status_code == 401, resp.text
        finally:
            await h.service.apply_settings(keyed.model_copy(update={"api_key": None}))
        await h.service.connect()
        await check_nothing_changed(h, case, before, expected)


def damage(save_dir: Path, good: str, store: SaveStore) -> dict[str, str]:
    """Files newer than ``good`` under valid names: (what, name)."""
    data = (save_dir / good).read_bytes()
    entry = store.get(good)
    assert entry is not None
    from datetime import timedelta

    def newer(hours: int) -> str:
        return store.new_filename(CHAT, "Mira", when=entry.timestamp + timedelta(hours=hours))

    made = {
        "truncated": newer(1),
        "truncated with its sidecar": newer(2),
        "zero bytes": newer(3),
        "garbage": newer(4),
        "symlink to a good save": newer(5),
        "symlink out of the directory": newer(6),
    }
    (save_dir / made["truncated"]).write_bytes(data[: len(data) // 2])
    (save_dir / made["truncated with its sidecar"]).write_bytes(data[: len(data) - 4096])
    sidecar = (save_dir / (good + ".json")).read_text()
    (save_dir / (made["truncated with its sidecar"] + ".json")).write_text(sidecar)
    (save_dir / made["zero bytes"]).write_bytes(b"")
    (save_dir / made["garbage"]).write_bytes(os.urandom(len(data)))
    (save_dir / made["symlink to a good save"]).symlink_to(save_dir / good)
    outside = save_dir.parent / "outside.bin"
    outside.write_bytes(data)
    (save_dir / made["symlink out of the directory"]).symlink_to(outside)
    return made


async def test_damaged_and_symlinked_saves_are_refused(harness: Harness) -> None:
    h = harness
    expected = {
        "Mira": await warm_and_save(h.service, "Mira", 600),
        "Kael": await warm_and_save(h.service, "Kael", 300),
    }
    store = h.service.require_store()
    save_dir = store.directory
    before = saves_of(save_dir)
    [good] = [name for name in before if "Mira" in name]
    made = damage(save_dir, good, store)
    store.rescan()
    listed = {e.filename for e in store.entries()}
    for what, name in made.items():
        async with fault_case(f"load of a {what} save") as case:
            if what.startswith("symlink"):
                assert name not in listed  # never listed
            slot = h.service.resident_slot(CHAT, "Mira")
            assert slot is not None
            with pytest.raises(KvtuiError) as caught:
                await h.service.load(name, slot)
            assert "\n" not in str(caught.value), str(caught.value)
            resp = await h.client.post(f"/slots/{slot}?action=restore", json={"filename": name})
            assert 400 <= resp.status_code < 500, (what, resp.status_code, resp.text)
            await check_nothing_changed(h, case, before, expected, planted=True)
    async with fault_case("autoload past damaged newer files") as case:
        latest = store.latest(CHAT, "Mira")
        assert latest is not None and latest.filename == good
        slot = h.service.resident_slot(CHAT, "Mira")
        assert slot is not None
        await h.service.erase(slot)  # cold: the next request must restore the good save
        case.lost = await restores_own_cache(h.service, save_dir, {"Mira": expected["Mira"]})
        for name in made.values():
            (save_dir / name).unlink()
            (save_dir / (name + ".json")).unlink(missing_ok=True)
        case.lost += audit(save_dir, before, n_ctx=SLOT_CTX)
