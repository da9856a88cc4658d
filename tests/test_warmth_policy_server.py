"""The RAM-aware restore policy's premise, on the real server with its default prompt cache.

A character swapped out of its slot and back: llama-server brings its newest state back from
host memory by itself, so kvtui's disk restore of an older save only costs a read and serves
fewer tokens. The ledger's model of the server's memory knows it, and the policy skips the read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama import LlamaClient
from kvtui.warmth import (
    RamCacheInfo,
    TurnDecision,
    WarmthLedger,
    WarmthPolicy,
    detect_ram_cache,
    should_restore_from_disk,
)

STORY = "Kael is a quiet ranger of the Forest Party. " * 4
OTHER = "Mira is a cheerful healer who brews tea for everyone. " * 4
AWARE = WarmthPolicy(skip_restore_when_ram_cached=True)


@pytest.fixture
async def client(clean_server: EmbeddedServer) -> AsyncIterator[LlamaClient]:
    async with LlamaClient(clean_server.url, save_dir=clean_server.save_dir) as c:
        yield c


async def run(
    ledger: WarmthLedger, client: LlamaClient, who: str, prompt: str, **kw: object
) -> int:
    d = TurnDecision("camp", who, "explicit", "normal", 0, prompt, **kw)  # type: ignore[arg-type]
    ticket = ledger.begin(d)
    result = await client.completion(prompt, n_predict=1, id_slot=0, temperature=0.0)
    ledger.finish(ticket, result.timings.model_dump())
    await ledger.drain()
    return result.timings.cache_n


async def swap_out_and_back(client: LlamaClient, ledger: WarmthLedger) -> tuple[int, int]:
    """Kael saved early, talks on, Mira takes the slot. Returns (saved tokens, Kael's tokens)."""
    first = STORY + "\nUser: Hello.\nKael:"
    await run(ledger, client, "Kael", first)
    saved = await client.save(0, "kael.bin")
    second = first + " Greetings.\nUser: Where to?\nKael:"
    await run(ledger, client, "Kael", second)
    await run(ledger, client, "Mira", OTHER + "\nUser: Tea?\nMira:")
    held = ledger.ram_cache_holds("camp", "Kael")
    assert held is not None
    return saved.n_saved, held


async def test_memory_serves_more_than_an_older_save(client: LlamaClient) -> None:
    info = await detect_ram_cache(client)
    assert info.enabled
    third = (
        STORY + "\nUser: Hello.\nKael: Greetings.\nUser: Where to?\nKael: East.\nUser: Go.\nKael:"
    )

    ledger = WarmthLedger(None)
    ledger.configure_ram_cache(info, bytes_per_token=528, n_ctx_total=4096)
    saved, held = await swap_out_and_back(client, ledger)
    choice = should_restore_from_disk(
        AWARE, has_save=True, save_tokens=saved, ram=info, ram_tokens=held
    )
    assert not choice.act and held > saved
    from_memory = await run(ledger, client, "Kael", third, resident=False, ram_cache_relied=True)
    assert from_memory >= held - 4  # the server brought Kael's newest state back by itself
    assert ledger.records()[-1].lost_tokens == 0

    await client.erase(0)
    ledger = WarmthLedger(None)
    ledger.configure_ram_cache(info, bytes_per_token=528, n_ctx_total=4096)
    saved, held = await swap_out_and_back(client, ledger)
    assert should_restore_from_disk(
        WarmthPolicy(), has_save=True, save_tokens=saved, ram=info, ram_tokens=held
    ).act  # the seed's rule restores...
    restored = await client.restore(0, "kael.bin")
    from_disk = await run(
        ledger,
        client,
        "Kael",
        third,
        resident=False,
        restored="kael.bin",
        restored_tokens=restored.n_restored,
    )
    assert from_disk <= saved  # ... and serves only what the older save held
    assert from_memory - from_disk >= held - saved - 4
    assert ledger.records()[-1].reason == "older_save"


def test_without_memory_the_save_is_restored() -> None:
    off = RamCacheInfo(False, 0, "command line", "")
    choice = should_restore_from_disk(
        AWARE, has_save=True, save_tokens=10, ram=off, ram_tokens=None
    )
    assert choice.act
