"""After a restart, the slot book lists no character that has no cache anywhere: an entry whose
slot the server no longer holds and that has no save is dropped, said once in the event log;
one with a save stays and is restored from it on its next request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.events import Event
from kvtui.service import KvService
from kvtui.settings import Settings
from tests.faults.conftest import fault_case
from tests.faults.helpers import CHAT, reset, restores_own_cache, warm_and_save

pytestmark = pytest.mark.server


def drops(events: list[Event]) -> list[str]:
    return [e.message for e in events if e.message.startswith("Dropped ")]


async def test_cacheless_entries_are_dropped_when_kvtui_starts_again(
    fault_llama: EmbeddedServer, tmp_path: Path
) -> None:
    await asyncio.to_thread(reset, fault_llama)
    settings = Settings(
        server_url=fault_llama.url, save_dir=fault_llama.save_dir, state_dir=tmp_path / "state"
    )
    async with fault_case("kvtui and llama-server restarted: cacheless entries dropped") as case:
        async with KvService(settings) as first:
            await first.connect()
            expected = {"Mira": await warm_and_save(first, "Mira", 400)}
            await first.assign(1, CHAT, "Lea")  # listed, never warmed, never saved
        await asyncio.to_thread(fault_llama.restart)
        async with KvService(settings) as again:
            await again.refresh()
            assert again.resident_slot(CHAT, "Lea") is None
            assert again.resident_slot(CHAT, "Mira") is not None  # its save restores it
            [line] = drops(again.events.recent())
            assert "Lea" in line and "Mira" not in line
            await again.refresh()
            assert len(drops(again.events.recent())) == 1  # said once
            case.lost = await restores_own_cache(again, fault_llama.save_dir, expected)  # type: ignore[arg-type]


async def test_cacheless_entries_are_dropped_when_the_server_restarts(
    fault_llama: EmbeddedServer, tmp_path: Path
) -> None:
    await asyncio.to_thread(reset, fault_llama)
    settings = Settings(
        server_url=fault_llama.url, save_dir=fault_llama.save_dir, state_dir=tmp_path / "state"
    )
    async with (
        fault_case("llama-server killed under kvtui: cacheless entries dropped") as case,
        KvService(settings) as service,
    ):
        await service.connect()
        expected = {"Kael": await warm_and_save(service, "Kael", 400)}
        slot = service.resident_slot(CHAT, "Kael")
        await service.assign(1 - (slot or 0), CHAT, "Lea")
        await service.refresh()
        fault_llama.kill()
        await asyncio.to_thread(fault_llama.start)
        await service.refresh()
        assert service.resident_slot(CHAT, "Lea") is None
        assert service.resident_slot(CHAT, "Kael") is not None
        [line] = drops(service.events.recent())
        assert "Lea" in line
        case.lost = await restores_own_cache(service, fault_llama.save_dir, expected)  # type: ignore[arg-type]
