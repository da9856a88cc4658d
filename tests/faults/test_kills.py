"""kill -9 of llama-server at the worst moments — during a save, a restore, a stream and a
prewarm — with two warm, saved characters on the server. After each, the server is started
again as a user would, kvtui notices, and the case counts saves lost (gone, changed, or not
restoring their character's cache) and slots the book still calls warm that lost their cache.

The kill waits on a condition, never a sleep: the in-flight private file exists (save), the
server's process has the save file open (restore), the first streamed token arrived (stream),
the server is processing the prewarm's prompt (prewarm).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.errors import KvtuiError
from kvtui.prewarm import Outcome, PromptChoice, prewarm
from kvtui.service import KvService
from kvtui.settings import Settings
from tests.faults.conftest import SLOT_CTX, fault_case
from tests.faults.helpers import (
    CHAT,
    audit,
    common_prefix,
    prompt_for,
    reset,
    restores_own_cache,
    saves_of,
    server_has_open,
    wait_until,
    warm_and_save,
    wiped_by_mistake,
)
from tests.test_proxy import running_proxy, st_body

pytestmark = pytest.mark.server

BIG = 6000
"""Tokens of the big prompt: a save of about 3 MB."""


@pytest.fixture
async def service(fault_llama: EmbeddedServer, tmp_path: Path) -> AsyncIterator[KvService]:
    await asyncio.to_thread(reset, fault_llama)
    settings = Settings(
        server_url=fault_llama.url, save_dir=fault_llama.save_dir, state_dir=tmp_path / "state"
    )
    async with KvService(settings) as svc:
        await svc.connect()
        yield svc


async def two_warm(service: KvService) -> dict[str, list[int]]:
    return {
        "Mira": await warm_and_save(service, "Mira", 1000),
        "Kael": await warm_and_save(service, "Kael", 600),
    }


async def recover(service: KvService, server: EmbeddedServer) -> None:
    """The user starts llama-server again; kvtui's next poll notices, its repair runs."""
    await asyncio.to_thread(server.start)
    await service.refresh()
    service.repair_saves()


async def settle(task: asyncio.Task[object]) -> None:
    """The interrupted operation ends in a clear one-line error, or had just finished."""
    try:
        await task
    except KvtuiError as err:
        assert "\n" not in str(err) and "Traceback" not in str(err), str(err)


async def findings(
    service: KvService, before: dict[str, bytes], expected: dict[str, list[int]]
) -> tuple[int, int]:
    save_dir = service.require_store().directory
    lost = audit(save_dir, before, n_ctx=SLOT_CTX)
    wiped = await wiped_by_mistake(service, save_dir, expected)
    lost += await restores_own_cache(service, save_dir, expected)
    return lost, wiped


async def test_killed_during_a_save(service: KvService, fault_llama: EmbeddedServer) -> None:
    async with fault_case("kill -9 llama-server during a save") as case:
        expected = await two_warm(service)
        before = saves_of(fault_llama.save_dir)  # type: ignore[arg-type]
        slot = service.resident_slot(CHAT, "Mira")
        assert slot is not None
        await service.complete(prompt_for("Mira", BIG), slot=slot)  # more story, unsaved
        longer = await service.tokenize(prompt_for("Mira", BIG), add_special=True)
        expected["Mira"] = common_prefix(expected["Mira"], longer)  # the save may complete
        task = asyncio.create_task(service.save_slot(slot))
        save_dir = service.require_store().directory
        seen = await wait_until(
            lambda: any(n.startswith(".kvtui-saving-") for n in _names(save_dir)), task.done
        )
        mid = seen and not task.done()
        fault_llama.kill()
        case.killed(mid)
        await settle(task)
        await recover(service, fault_llama)
        case.lost, case.wiped = await findings(service, before, expected)


async def test_killed_during_a_restore(service: KvService, fault_llama: EmbeddedServer) -> None:
    async with fault_case("kill -9 llama-server during a restore") as case:
        expected = await two_warm(service)
        slot = service.resident_slot(CHAT, "Mira")
        assert slot is not None
        await service.complete(prompt_for("Mira", BIG), slot=slot)
        big = await service.save_slot(slot, tag="long")
        expected["Mira"] = await service.tokenize(prompt_for("Mira", BIG), add_special=True)
        before = saves_of(fault_llama.save_dir)  # type: ignore[arg-type]
        await service.erase(slot)
        save_dir = service.require_store().directory
        task = asyncio.create_task(service.load(big.filename, slot))
        seen = await wait_until(lambda: server_has_open(fault_llama, save_dir), task.done)
        mid = seen and not task.done()
        fault_llama.kill()
        case.killed(mid)
        await settle(task)
        await recover(service, fault_llama)
        case.lost, case.wiped = await findings(service, before, expected)


async def test_killed_during_a_stream(
    service: KvService, fault_llama: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    settings = service.settings
    async with fault_case("kill -9 llama-server during a stream") as case:
        expected = await two_warm(service)
        before = saves_of(fault_llama.save_dir)  # type: ignore[arg-type]
        await service.aclose()  # the proxy's own service keeps the book from here
        body = st_body(prompt_for("Mira", 1000), ["\nAlex:"], stream=True, n_predict=400)
        body["ignore_eos"] = True
        headers = {"X-KVTUI-Chat": CHAT, "X-KVTUI-Character": "Mira"}
        caplog.set_level(logging.ERROR)
        async with running_proxy(settings) as h:
            h.service.set_current_chat(CHAT)
            async with h.client.stream("POST", "/completion", json=body, headers=headers) as r:
                assert r.status_code == 200
                chunks = r.aiter_raw()
                await anext(chunks)  # the first token is streaming: kill the server now
                fault_llama.kill()
                case.killed(True)
                try:
                    async for _ in chunks:
                        pass
                except httpx.HTTPError:
                    pass  # the stream was cut: what a dead server does
            await h.proxy.app.settled()
            await recover(h.service, fault_llama)
            body = dict(body, stream=False, n_predict=2)
            resp = await h.client.post("/completion", json=body, headers=headers)
            assert resp.status_code == 200, resp.text
            await h.proxy.app.settled()
            case.tracebacks = sum(1 for rec in caplog.records if rec.exc_info)
            case.lost, case.wiped = await findings(h.service, before, expected)


async def test_killed_during_a_prewarm(service: KvService, fault_llama: EmbeddedServer) -> None:
    async with fault_case("kill -9 llama-server during a prewarm") as case:
        expected = await two_warm(service)
        before = saves_of(fault_llama.save_dir)  # type: ignore[arg-type]
        choices = [PromptChoice("Lea", prompt_for("Lea", BIG), "test")]
        task = asyncio.create_task(prewarm(service, CHAT, choices, concurrency=1))
        async with httpx.AsyncClient(base_url=fault_llama.url, timeout=30) as direct:

            async def processing() -> bool:
                try:
                    slots = (await direct.get("/slots")).json()
                except httpx.HTTPError:
                    return False
                return any(s.get("is_processing") for s in slots)

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 300
            while not task.done() and not await processing():
                assert loop.time() < deadline, "the prewarm never reached the server"
        mid = not task.done()
        fault_llama.kill()
        case.killed(mid)
        report = await task  # a prewarm reports failures, it does not raise
        assert [r.outcome for r in report.results] in ([Outcome.FAILED], [Outcome.WARMED])
        await recover(service, fault_llama)
        case.lost, case.wiped = await findings(service, before, expected)


def _names(directory: Path) -> list[str]:
    import os

    return os.listdir(directory)
