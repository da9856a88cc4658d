"""Slot lending (``kvtui.slots.lending``): the one parking implementation, seen through both of
its users — the service's ``borrowed_slot`` (the proxy's background jobs) and the memory job
runner — against the real llama-server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama import LlamaClient
from kvtui.memory.jobs import JobError, JobRunner
from kvtui.memory.settings import MemorySettings
from kvtui.service import KvService
from kvtui.slots.lending import LendError, lent_slot
from kvtui.store.names import is_private_name
from tests.test_proxy import make_settings

pytestmark = pytest.mark.server


async def _fill(client: LlamaClient) -> dict[int, int]:
    """Slots 0 and 1 hold a character each (slot 1 the larger); returns tokens per slot."""
    for slot, words in ((0, 40), (1, 80)):
        text = "Seraphina tends the glade. " * words
        await client.completion(f"{text}\nSeraphina:", n_predict=1, id_slot=slot)
    return {s.id: s.n_prompt_tokens or 0 for s in await client.slots()}


def _private(save_dir: Path) -> list[str]:
    return [p.name for p in save_dir.iterdir() if is_private_name(p.name)]


async def test_the_service_lends_the_preferred_slot_and_gives_it_back(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    save_dir = clean_server.save_dir
    assert save_dir is not None
    async with KvService(make_settings(clean_server, tmp_path)) as service:
        before = await _fill(service.client)
        assert before[1] > before[0] > 0
        async with service.borrowed_slot(1) as slot:
            assert slot == 1  # preferred, though slot 0 holds fewer tokens
            assert service.job_gate().locked()  # no routing while the slot is lent
            assert len(_private(save_dir)) == 1
            await service.client.completion("A summary job. " * 30, n_predict=4, id_slot=slot)
        assert not service.job_gate().locked()
        after = {s.id: s.n_prompt_tokens or 0 for s in await service.client.slots()}
        assert after == before
        assert _private(save_dir) == []
        async with service.borrowed_slot(None) as slot:
            assert slot == 2  # no preference: an empty slot (fewest tokens)
        assert (await service.client.slots())[2].n_prompt_tokens in (0, None)


async def test_a_lost_park_is_logged_by_the_service_and_raised_by_the_job_runner(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    """The parked file vanishes mid-job: the service tells its event log (the job's reply is
    already out), the memory runner raises a ``JobError``; both say which slot."""
    save_dir = clean_server.save_dir
    assert save_dir is not None
    async with KvService(make_settings(clean_server, tmp_path)) as service:
        await _fill(service.client)
        async with service.borrowed_slot(1) as slot:
            for name in _private(save_dir):
                (save_dir / name).unlink()
        errors = [e.message for e in service.events.recent() if "Giving a slot back" in e.message]
        assert errors and f"Slot {slot}'s cache could not be restored" in errors[-1]

        await _fill(service.client)
        runner = JobRunner(  # only slot 0 may be lent: the others are "busy"
            service.client, MemorySettings(), gate=asyncio.Lock(), busy=lambda slot: slot != 0
        )
        with pytest.raises(JobError, match="Slot 0's cache could not be restored"):
            async with runner.borrow() as borrowed:
                assert borrowed.slot == 0 and borrowed.filename is not None
                (save_dir / borrowed.filename).unlink()


async def test_no_idle_slot_and_no_save_dir_are_refused(clean_server: EmbeddedServer) -> None:
    async with LlamaClient(clean_server.url) as client:
        with pytest.raises(LendError, match="save_dir"):
            async with lent_slot(client):
                pass
    async with LlamaClient(clean_server.url, save_dir=clean_server.save_dir) as client:
        with pytest.raises(LendError, match="No slot was idle"):
            async with lent_slot(client, busy=lambda slot: True):
                pass
