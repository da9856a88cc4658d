"""Integration tests of ``LlamaClient`` against a real llama-server (the embedded one).

Prompts are token-id lists of printable ASCII (ids 32..126), which give exact token counts.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer, free_port
from kvtui.llama import (
    AuthenticationFailed,
    InvalidFilename,
    LlamaClient,
    RestoreFailed,
    SaveFileMissing,
    ServerUnreachable,
    SlotActionsDisabled,
    SlotOutOfRange,
    SlotState,
)

pytestmark = pytest.mark.server


def tokens(n: int, start: int = 65) -> list[int]:
    """``n`` printable-ASCII token ids (a distinct prompt per ``start``)."""
    return [32 + (start - 32 + i) % 95 for i in range(n)]


@pytest.fixture
async def client(clean_server: EmbeddedServer) -> AsyncIterator[LlamaClient]:
    async with LlamaClient(clean_server.url, save_dir=clean_server.save_dir) as llama:
        yield llama


@pytest.fixture
def save_path(clean_server: EmbeddedServer) -> Path:
    assert clean_server.save_dir is not None
    return clean_server.save_dir


async def slot(client: LlamaClient, slot_id: int) -> SlotState:
    return (await client.slots())[slot_id]


async def wait_busy(client: LlamaClient, slot_id: int) -> None:
    """Poll /slots until ``slot_id`` is processing (up to 30 s)."""
    for _ in range(6000):
        if (await slot(client, slot_id)).is_processing:
            return
        await asyncio.sleep(0.005)
    pytest.fail(f"slot {slot_id} never became busy")


async def test_props_and_slots(client: LlamaClient, clean_server: EmbeddedServer) -> None:
    props = await client.props()
    assert props.total_slots == clean_server.n_slots == 4
    assert props.n_ctx == clean_server.n_ctx_per_slot == 1024
    assert props.model and props.build_info
    assert client.total_slots == 4
    slots = await client.slots()
    assert [s.id for s in slots] == [0, 1, 2, 3]
    assert all(s.n_ctx == 1024 and not s.is_processing for s in slots)


async def test_health_tokenize_metrics(client: LlamaClient) -> None:
    assert await client.health() == "ok"
    await client.wait_until_ready(timeout=5)
    assert await client.tokenize("Hi ABC") == [72, 105, 32, 65, 66, 67]
    with_bos = await client.tokenize("Hi", add_special=True)
    assert len(with_bos) == 3 and with_bos[1:] == [72, 105]
    metrics = await client.metrics()
    assert metrics is not None and "llamacpp:prompt_tokens_total" in metrics


async def test_completion_save_erase_restore(client: LlamaClient, save_path: Path) -> None:
    prompt = tokens(40)
    first = await client.completion(prompt, n_predict=1, id_slot=1)
    assert first.id_slot == 1
    assert (first.timings.prompt_n, first.timings.cache_n) == (40, 0)
    assert (await slot(client, 1)).n_prompt_tokens == 40

    saved = await client.save(1, "forty.bin")
    assert (saved.id_slot, saved.filename, saved.n_saved) == (1, "forty.bin", 40)
    file = save_path / "forty.bin"
    assert file.is_file() and saved.n_written == file.stat().st_size

    erased = await client.erase(1)
    assert erased.n_erased == 40
    assert (await slot(client, 1)).n_prompt_tokens == 0

    restored = await client.restore(2, "forty.bin")
    assert (restored.id_slot, restored.n_restored, restored.n_read) == (2, 40, saved.n_written)
    again = await client.completion(prompt, n_predict=1, id_slot=2)
    assert abs(again.timings.cache_n - saved.n_saved) <= 1
    assert again.timings.prompt_n <= 1


async def test_out_of_range_slot_is_refused_before_the_server(
    client: LlamaClient, save_path: Path
) -> None:
    await client.completion(tokens(20), n_predict=1, id_slot=3)  # what a wrapped id would hit
    for bad in (4, 99, -1):
        with pytest.raises(SlotOutOfRange, match="0 to 3"):
            await client.save(bad, "wrapped.bin")
        with pytest.raises(SlotOutOfRange):
            await client.erase(bad)
        with pytest.raises(SlotOutOfRange):
            await client.completion("Hi", id_slot=bad)
    assert not (save_path / "wrapped.bin").exists()
    assert await asyncio.to_thread(os.listdir, save_path) == []
    assert (await slot(client, 3)).n_prompt_tokens == 20


async def test_restore_of_a_missing_file_is_refused_and_the_slot_keeps_its_tokens(
    client: LlamaClient,
) -> None:
    prompt = tokens(30, start=40)
    await client.completion(prompt, n_predict=1, id_slot=0)
    before = (await slot(client, 0)).n_prompt_tokens
    assert before == 30
    with pytest.raises(SaveFileMissing, match="keeps its cache"):
        await client.restore(0, "missing.bin")
    assert (await slot(client, 0)).n_prompt_tokens == before
    again = await client.completion(prompt, n_predict=1, id_slot=0)
    assert again.timings.cache_n == 29


async def test_a_failed_restore_on_the_server_clears_the_slot(clean_server: EmbeddedServer) -> None:
    """Without a save_dir the client cannot check: the server refuses, and wipes the slot."""
    async with LlamaClient(clean_server.url) as client:
        await client.completion(tokens(25), n_predict=1, id_slot=1)
        with pytest.raises(RestoreFailed, match="cleared the slot"):
            await client.restore(1, "missing.bin")
        assert (await slot(client, 1)).n_prompt_tokens == 0


async def test_path_traversal_is_refused(client: LlamaClient, save_path: Path) -> None:
    await client.completion(tokens(10), n_predict=1, id_slot=0)
    for name in ("../x.bin", "a/b.bin", "", ".."):
        with pytest.raises(InvalidFilename):
            await client.save(0, name)
        with pytest.raises(InvalidFilename):
            await client.restore(0, name)
    assert not (save_path.parent / "x.bin").exists()
    # The server's own refusal maps to the same error.
    with pytest.raises(InvalidFilename, match="Invalid filename"):
        await client._slot_action(0, "save", {"filename": "../x.bin"}, filename="../x.bin")


async def test_save_on_a_busy_slot_waits_for_it(client: LlamaClient, save_path: Path) -> None:
    generation = asyncio.create_task(
        client.completion(tokens(20), n_predict=600, id_slot=3, ignore_eos=True)
    )
    await wait_busy(client, 3)
    async with asyncio.timeout(120):
        saved = await client.save(3, "busy.bin")
    # The save waited for the slot: it holds the finished generation (prompt + 600 tokens).
    # (Whether the client has read the generation's own reply yet is a race of two sockets.)
    assert saved.n_saved >= 600
    async with asyncio.timeout(30):
        result = await generation
    assert result.timings.predicted_n == 600
    assert saved.n_written == (save_path / "busy.bin").stat().st_size


async def test_unreachable_server() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with LlamaClient(url, timeout=2) as client:
        with pytest.raises(ServerUnreachable) as info:
            await client.health()
        assert url in info.value.message
        assert "llama-server -m" in str(info.value)
        with pytest.raises(ServerUnreachable):
            await client.save(0, "x.bin")
        with pytest.raises(ServerUnreachable, match="did not become ready within 0.3 s"):
            await client.wait_until_ready(timeout=0.3)


@pytest.fixture(scope="module")
def locked_server() -> Iterator[EmbeddedServer]:
    """A second server: API key required, no --slot-save-path."""
    with EmbeddedServer(save_dir=None, n_slots=2, n_ctx=512, api_key="sekret") as server:
        yield server


async def test_api_key(locked_server: EmbeddedServer) -> None:
    async with LlamaClient(locked_server.url) as anonymous:
        assert await anonymous.health() == "ok"  # /health is public
        with pytest.raises(AuthenticationFailed, match="needs an API key"):
            await anonymous.props()
    async with LlamaClient(locked_server.url, api_key="wrong") as wrong:
        with pytest.raises(AuthenticationFailed, match="refused kvtui's API key"):
            await wrong.slots()
    async with LlamaClient(locked_server.url, api_key="sekret") as client:
        assert (await client.props()).total_slots == 2


async def test_server_without_save_path_refuses_slot_actions(
    locked_server: EmbeddedServer,
) -> None:
    async with LlamaClient(locked_server.url, api_key="sekret") as client:
        await client.completion(tokens(10), n_predict=1, id_slot=0)
        with pytest.raises(SlotActionsDisabled, match="--slot-save-path"):
            await client.save(0, "x.bin")
        with pytest.raises(SlotActionsDisabled):
            await client.restore(0, "x.bin")
        with pytest.raises(SlotActionsDisabled):
            await client.erase(0)


async def test_server_killed_mid_call(tmp_path: Path) -> None:
    server = EmbeddedServer(save_dir=tmp_path, n_slots=2, n_ctx=4096).start()
    try:
        async with LlamaClient(server.url, save_dir=tmp_path) as client:
            generation = asyncio.create_task(
                client.completion(tokens(20), n_predict=1900, id_slot=0, ignore_eos=True)
            )
            await wait_busy(client, 0)
            blocked_save = asyncio.create_task(client.save(0, "never.bin"))
            await asyncio.sleep(0.02)
            server.kill()
            for call in (generation, blocked_save):
                with pytest.raises(ServerUnreachable, match="broke|No llama-server") as info:
                    await call
                assert "running" in info.value.hint
            with pytest.raises(ServerUnreachable):
                await client.slots()
    finally:
        server.stop()


async def test_a_dropped_kept_alive_connection_is_retried_once() -> None:
    """llama-server closes kept-alive connections (at 5 s idle, and now and then otherwise): a
    request written to one it had just dropped is sent once more; a gone server still fails."""
    import httpx

    from kvtui.llama import LlamaClient, ServerUnreachable

    calls: list[str] = []

    def drop_first(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
        return httpx.Response(200, json={"status": "ok"})

    async with LlamaClient("http://127.0.0.1:9", transport=httpx.MockTransport(drop_first)) as c:
        await c.health()
    assert calls == ["/health", "/health"]

    def always_drop(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        raise httpx.RemoteProtocolError("Server disconnected without sending a response.")

    calls.clear()
    async with LlamaClient("http://127.0.0.1:9", transport=httpx.MockTransport(always_drop)) as c:
        with pytest.raises(ServerUnreachable, match="broke during GET /health"):
            await c.health()
    assert calls == ["/health", "/health"]  # once more, then the first error
