"""Load: 50 concurrent generations for 10 characters through the proxy, on a server of 2 slots.

Every request must complete; every save kvtui wrote meanwhile (autosaves, and the saves made
before a used character is evicted) must hold its own character's prompt — read from the slot
file's token list and restored into a slot to prove the server takes it back; and the slots the
book still gives a character must hold that character's cache. Bounded, no timing asserts (the
latency figures are ``benchmarks/load.py``'s).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama import LlamaClient
from kvtui.settings import Settings
from kvtui.store import SaveStore
from tests.faults.helpers import file_tokens, holds, prompt_for, slot_tokens
from tests.test_proxy import running_proxy, st_body

pytestmark = pytest.mark.server

CHAT = "Load Test"
CHARACTERS = [f"Member{i}" for i in range(10)]
REQUESTS = 50


@pytest.fixture(scope="module")
def two_slots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(save_dir=tmp_path_factory.mktemp("load-saves"), n_slots=2, n_ctx=4096)
    server.start()
    yield server
    server.stop()


async def test_fifty_concurrent_generations_for_ten_characters(
    two_slots: EmbeddedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KVTUI_CONFIG", str(tmp_path / "config.toml"))
    assert two_slots.save_dir is not None
    save_dir = two_slots.save_dir
    settings = Settings(
        server_url=two_slots.url, save_dir=save_dir, state_dir=tmp_path / "state", autosave_every=2
    )
    prompts = {c: prompt_for(c, 300) for c in CHARACTERS}
    async with running_proxy(settings) as h:
        h.service.set_current_chat(CHAT)
        expected = {c: await h.service.tokenize(p, add_special=True) for c, p in prompts.items()}

        async def generate(i: int) -> int:
            character = CHARACTERS[i % len(CHARACTERS)]
            body = st_body(prompts[character], ["\nAlex:"], n_predict=4)
            headers = {"X-KVTUI-Chat": CHAT, "X-KVTUI-Character": character}
            resp = await h.client.post("/completion", json=body, headers=headers)
            return resp.status_code

        codes = await asyncio.wait_for(
            asyncio.gather(*(generate(i) for i in range(REQUESTS))), timeout=900
        )
        await h.proxy.app.settled()
        assert codes == [200] * REQUESTS
        for record in h.service.book.snapshot():  # the book's residents hold their own caches
            if record.character is not None and record.autoload_done:
                got = await slot_tokens(h.service.client, record.slot, save_dir)
                assert holds(got, expected[record.character]), record
    store = SaveStore(save_dir)
    store.rescan()
    saves = [e for e in store.entries() if e.valid]
    assert len(saves) >= len(CHARACTERS)  # evictions save first, autosaves every 2 messages
    assert {e.character for e in saves} == set(CHARACTERS)
    async with LlamaClient(two_slots.url, save_dir=save_dir) as client:
        for entry in saves:
            tokens = file_tokens(save_dir / entry.filename)
            assert holds(tokens, expected[entry.character]), entry.filename
            restored = await client.restore(0, entry.filename)
            assert restored.n_restored == len(tokens)
            assert holds(await slot_tokens(client, 0, save_dir), expected[entry.character])
