"""KvService across restarts: of kvtui, of llama-server, and of both."""

from __future__ import annotations

from pathlib import Path

from kvtui.embedded.server import EmbeddedServer
from kvtui.service import KvService
from kvtui.settings import Settings, load_settings
from kvtui.slots import GenType

PROMPT = "Story.\n***\nAlex: Hello, Seraphina!\nSeraphina:"


def settings_for(server: EmbeddedServer, tmp_path: Path) -> Settings:
    return load_settings(
        tmp_path / "config.toml",
        server_url=server.url,
        save_dir=server.save_dir,
        state_dir=tmp_path / "state",
    )


async def fill_and_save(service: KvService) -> int:
    decision = await service.route("chat", "Seraphina", GenType.NORMAL)
    await service.client.completion(PROMPT, n_predict=1, id_slot=decision.slot)
    saved = await service.save_slot(decision.slot)
    return saved.n_saved


async def test_kvtui_restart_keeps_a_live_cache(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = settings_for(clean_server, tmp_path)
    async with KvService(settings) as first:
        await first.refresh()
        await fill_and_save(first)
    async with KvService(settings) as second:
        await second.refresh()
        decision = await second.route("chat", "Seraphina", GenType.SWIPE)
        assert decision.resident and decision.restored is None


async def test_server_restart_while_kvtui_was_down_restores(tmp_path: Path) -> None:
    with EmbeddedServer(save_dir=tmp_path / "saves", n_slots=2, n_ctx=2048) as server:
        settings = settings_for(server, tmp_path)
        async with KvService(settings) as first:
            await first.refresh()
            n_saved = await fill_and_save(first)
        server.restart()
        async with KvService(settings) as second:
            snap = await second.refresh()
            assert any("no longer holds" in e.message for e in second.events.recent())
            assert [r.tokens for r in snap.rows if r.character == "Seraphina"] == [None]
            decision = await second.route("chat", "Seraphina", GenType.NORMAL)
            assert decision.restored is not None and decision.restored.n_restored == n_saved
            result = await second.client.completion(PROMPT, n_predict=1, id_slot=decision.slot)
            assert result.timings.cache_n >= n_saved - 1


async def test_a_failed_restore_frees_the_slot_in_the_book(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    """The server clears a slot whose restore failed; the book must not claim it is still full."""
    import pytest

    from kvtui.llama import RestoreFailed

    settings = settings_for(clean_server, tmp_path)
    async with KvService(settings) as service:
        await service.refresh()
        await fill_and_save(service)
        store = service.require_store()
        name = store.new_filename("chat", "Kael")
        (store.directory / name).write_bytes(b"not a slot save")
        store.rescan()
        slot = service.book.find("chat", "Seraphina")
        assert slot is not None
        with pytest.raises(RestoreFailed):
            await service.load(name, slot)
        assert service.book.record(slot).character is None
        assert service.book.find("chat", "Kael") is None


def test_a_save_the_server_could_not_write_is_not_a_save() -> None:
    from kvtui.store import is_valid_save

    assert is_valid_save(4096, 2_000_000)
    assert not is_valid_save(4096, 0)  # disk full: the server still answers 200
    assert not is_valid_save(0, 48)  # an empty slot


async def test_assigning_over_a_used_character_saves_it_first(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = settings_for(clean_server, tmp_path)
    async with KvService(settings) as service:
        await service.refresh()
        decision = await service.route("chat", "Seraphina", GenType.NORMAL)
        await service.client.completion(PROMPT, n_predict=1, id_slot=decision.slot)
        store = service.require_store()
        assert store.latest("chat", "Seraphina") is None
        await service.assign(decision.slot, "chat", "Kael")
        store.rescan()
        latest = store.latest("chat", "Seraphina")
        assert latest is not None and latest.n_saved
        assert service.book.find("chat", "Kael") == decision.slot
