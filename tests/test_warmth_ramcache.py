"""Detecting llama-server's host-memory prompt cache (--cache-ram) on real embedded servers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama import LlamaClient
from kvtui.warmth.ramcache import (
    DEFAULT_CACHE_RAM_MIB,
    RamCacheInfo,
    detect_ram_cache,
    local_server_process,
    size_from_args,
    size_from_log,
)


@pytest.fixture(scope="module")
def no_ram_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    save_dir = tmp_path_factory.mktemp("no-ram-saves")
    with EmbeddedServer(save_dir=save_dir, n_slots=2, n_ctx=2048, cache_ram_mib=0) as server:
        yield server


async def test_default_server_has_the_cache_and_its_size(clean_server: EmbeddedServer) -> None:
    async with LlamaClient(clean_server.url) as client:
        info = await detect_ram_cache(client)
        assert info.enabled is True
        assert info.probe_tokens and info.probe_cache_n is not None
        assert info.probe_cache_n >= info.probe_tokens - 2
        # The embedded launcher passes no --cache-ram: the build default, read from its command.
        assert (info.size_mib, info.size_source) == (DEFAULT_CACHE_RAM_MIB, "embedded launcher")
        slots = await client.slots()
        assert all(not s.n_prompt_tokens for s in slots)  # the probe's slot was erased


async def test_cache_ram_0_is_seen_as_off(no_ram_server: EmbeddedServer) -> None:
    async with LlamaClient(no_ram_server.url) as client:
        info = await detect_ram_cache(client)
        assert info.enabled is False and info.size_mib == 0
        assert info.probe_cache_n is not None and info.probe_tokens is not None
        assert info.probe_cache_n < info.probe_tokens // 2  # only the probes' shared opening
        assert info.capacity_tokens(528, 2048) == 0
        without_probe = await detect_ram_cache(client, probe=False)
        assert without_probe.enabled is False
        assert without_probe.size_source == "embedded launcher"


async def test_no_free_slot_means_no_probe(no_ram_server: EmbeddedServer) -> None:
    async with LlamaClient(no_ram_server.url) as client:
        for slot in (0, 1):
            await client.completion("Busy slot " * 10, n_predict=1, id_slot=slot)
        before = [s.n_prompt_tokens for s in await client.slots()]
        try:
            info = await detect_ram_cache(client)
            assert info.probe_cache_n is None  # nobody's cache was touched
            assert info.enabled is False  # ... the command line still says it
            assert [s.n_prompt_tokens for s in await client.slots()] == before
            assert all(before)
        finally:
            for slot in (0, 1):
                await client.erase(slot)


def test_the_process_behind_a_local_url(no_ram_server: EmbeddedServer) -> None:
    found = local_server_process(no_ram_server.url)
    assert found is not None
    argv, _env = found
    assert size_from_args(argv) == (0, "embedded launcher")
    assert local_server_process("http://192.0.2.1:8080") is None  # not this machine


def test_sizes_from_command_lines_environment_and_logs() -> None:
    assert size_from_args(["llama-server", "-m", "m.gguf", "--cache-ram", "4096"]) == (
        4096,
        "command line",
    )
    assert size_from_args(["llama-server", "-cram", "-1"]) == (-1, "command line")
    assert size_from_args(["llama-server", "--cache-ram=0"]) == (0, "command line")
    assert size_from_args(["llama-server"], {"LLAMA_ARG_CACHE_RAM": "2048"}) == (
        2048,
        "environment",
    )
    assert size_from_args(["llama-server"]) == (DEFAULT_CACHE_RAM_MIB, "assumed default")
    log = "srv    load_model: prompt cache is enabled, size limit: 8192 MiB\n"
    assert size_from_log(log) == 8192
    assert size_from_log("prompt cache is enabled, size limit: no limit") == -1
    assert size_from_log("prompt cache is disabled - use `--cache-ram N` to enable it") == 0
    assert size_from_log("nothing about it") is None


def test_capacity_in_tokens() -> None:
    on = RamCacheInfo(True, 8192, "command line", "")
    # 8 GiB of 160 KiB-per-token states: 52,428 tokens; never below the server's context.
    assert on.capacity_tokens(163_840, 16_384) == 52_428
    assert on.capacity_tokens(10**9, 16_384) == 16_384
    assert RamCacheInfo(True, -1, "command line", "").capacity_tokens(528, 4096) is None


async def test_avoided_slots_are_never_probed(no_ram_server: EmbeddedServer) -> None:
    async with LlamaClient(no_ram_server.url) as client:
        info = await detect_ram_cache(client, avoid={0, 1})
        assert info.probe_cache_n is None and info.enabled is False


async def test_bytes_per_token_measured_on_real_saves(clean_server: EmbeddedServer) -> None:
    from kvtui.store import SaveMeta, SaveStore
    from kvtui.warmth.bridge import bytes_per_token

    assert clean_server.save_dir is not None
    store = SaveStore(clean_server.save_dir)
    assert bytes_per_token(store) == 528.0  # no saves yet: the default
    async with LlamaClient(clean_server.url) as client:
        await client.completion("A story to save. " * 20, n_predict=1, id_slot=0)
        name = store.new_filename("camp", "Kael")
        saved = await client.save(0, name)
    store.write_meta(
        name,
        SaveMeta(chat="camp", character="Kael", n_saved=saved.n_saved, n_written=saved.n_written),
    )
    assert bytes_per_token(store) == saved.n_written / saved.n_saved
    assert 528 < bytes_per_token(store) < 540  # 528 per token plus the file's header
