"""KV-safe memory jobs against the real embedded llama-server (tiny random-weights model).

A character's turns go straight to the server with ``LlamaClient`` (``id_slot``,
``cache_prompt: true``, greedy sampling so both runs generate the same text); the second turn's
``cache_n`` is compared with and without a memory job in between, in both modes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama.client import LlamaClient
from kvtui.memory.contract import memory_schema, parse_memory
from kvtui.memory.jobs import JobProgress, JobRunner, PromptTooLarge
from kvtui.memory.settings import MemorySettings
from kvtui.store.names import is_private_name

JOB_PROMPT = (
    "Write a memory of the scene below as JSON.\n\n=== SCENE TRANSCRIPT ===\n"
    "Alex: where am i\nSeraphina: you are safe here in the glade\n\n=== END SCENE ===\n"
)
SERVERS = ["clean_server", "strict_server"]
SCHEMA = memory_schema(max_title=40, max_content=200, max_keywords=6)


def character_prompt(name: str, length: int) -> str:
    text = f"{name}: the forest party walks by the river in the light of the night. "
    return (text * (length // len(text) + 1))[:length]


async def turn(client: LlamaClient, slot: int, prompt: str) -> tuple[str, int]:
    result = await client.completion(
        prompt, n_predict=12, id_slot=slot, top_k=1, temperature=0.0, seed=7
    )
    return result.content, result.timings.cache_n


async def two_turns_cache_n(
    client: LlamaClient,
    slot: int,
    prompt: str,
    between: Callable[[], Awaitable[None]] | None = None,
) -> int:
    """The second turn's cache_n; ``between`` (a coroutine factory) runs between the turns."""
    first, _ = await turn(client, slot, prompt)
    if between is not None:
        await between()
    _, cache_n = await turn(client, slot, prompt + first + " and then Mira laughed.")
    return cache_n


def utility(**extra: Any) -> MemorySettings:
    # 700 tokens hold the schema's longest reply (about 600 characters) with room to spare.
    return MemorySettings(memory_slot=3, memory_n_predict=700, **extra)


def check_schema_valid(text: str) -> None:
    data = json.loads(text)
    assert set(data) == {"title", "content", "keywords"}
    assert isinstance(data["title"], str) and 1 <= len(data["title"]) <= 40
    assert isinstance(data["content"], str) and 1 <= len(data["content"]) <= 200
    words = data["keywords"]
    assert isinstance(words, list) and 1 <= len(words) <= 6
    assert all(isinstance(w, str) and 1 <= len(w) <= 32 for w in words)


async def test_grammar_gives_schema_valid_json_every_time(clean_server: EmbeddedServer) -> None:
    async with LlamaClient(clean_server.url, save_dir=clean_server.save_dir) as client:
        runner = JobRunner(client, utility())
        for _ in range(5):
            result = await runner.run(JOB_PROMPT, json_schema=SCHEMA)
            assert result.mode == "utility" and result.slot == 3
            assert result.stop_type == "eos", result.content
            check_schema_valid(result.content)
            memory = parse_memory(result.content, stop_type=result.stop_type)
            assert memory.title and memory.content and memory.keywords


async def test_prompt_that_cannot_fit_the_slot_is_refused(clean_server: EmbeddedServer) -> None:
    async with LlamaClient(clean_server.url, save_dir=clean_server.save_dir) as client:
        runner = JobRunner(client, utility(memory_token_warning=50))
        budget = await runner.budget(JOB_PROMPT)
        assert budget.fits and budget.n_ctx == clean_server.n_ctx_per_slot
        assert budget.warning is not None and "warning threshold" in budget.warning
        with pytest.raises(PromptTooLarge):
            await runner.run("x " * 800, json_schema=SCHEMA)
        slots = await client.slots()
        assert not slots[3].n_prompt_tokens  # nothing was sent


@pytest.mark.parametrize("server_name", SERVERS)
async def test_utility_slot_job_keeps_the_characters_cache(
    server_name: str, request: pytest.FixtureRequest
) -> None:
    clean_server: EmbeddedServer = request.getfixturevalue(server_name)
    prompt = character_prompt("Seraphina", 400)
    async with LlamaClient(clean_server.url, save_dir=clean_server.save_dir) as client:
        baseline = await two_turns_cache_n(client, 0, prompt)
        await client.erase(0)
        runner = JobRunner(client, utility())

        async def job() -> None:
            result = await runner.run(JOB_PROMPT, json_schema=SCHEMA)
            assert result.slot == 3

        with_job = await two_turns_cache_n(client, 0, prompt, job)
        assert baseline >= len(await client.tokenize(prompt))  # the whole first prompt reused
        assert with_job == baseline


async def fill_slots(client: LlamaClient) -> dict[int, str]:
    """Four characters, slot 0 the smallest (the one a borrow should take)."""
    prompts = {
        0: character_prompt("Seraphina", 300),
        1: character_prompt("Kael", 500),
        2: character_prompt("Mira", 520),
        3: character_prompt("Brann", 540),
    }
    for slot, prompt in prompts.items():
        await turn(client, slot, prompt)
    return prompts


@pytest.mark.parametrize("server_name", SERVERS)
async def test_borrowed_slot_job_parks_and_restores(
    server_name: str, request: pytest.FixtureRequest
) -> None:
    clean_server: EmbeddedServer = request.getfixturevalue(server_name)
    save_dir = clean_server.save_dir
    assert save_dir is not None
    async with LlamaClient(clean_server.url, save_dir=save_dir) as client:
        prompts = await fill_slots(client)
        first, _ = await turn(client, 0, prompts[0])
        follow_up = prompts[0] + first + " and then Mira laughed."
        await client.erase(0)
        await turn(client, 0, prompts[0])
        _, baseline = await turn(client, 0, follow_up)

        await client.erase(0)
        await turn(client, 0, prompts[0])
        before = {s.id: s.n_prompt_tokens for s in await client.slots()}
        gate = asyncio.Lock()
        held: list[bool] = []

        def progress(step: JobProgress) -> None:
            if step.stage == "generating":
                held.append(gate.locked())

        runner = JobRunner(client, MemorySettings(memory_n_predict=700), gate=gate)
        result = await runner.run(JOB_PROMPT, json_schema=SCHEMA, on_progress=progress)
        assert result.mode == "borrowed" and result.slot == 0
        assert result.parked is not None and is_private_name(result.parked)
        assert result.n_parked == before[0]
        check_schema_valid(result.content)
        assert held and all(held), "the routing gate is held while the job runs"
        assert not gate.locked()
        after = {s.id: s.n_prompt_tokens for s in await client.slots()}
        assert after == before
        assert not [p for p in save_dir.iterdir() if is_private_name(p.name)]

        _, with_job = await turn(client, 0, follow_up)
        assert with_job == baseline
        assert baseline >= len(await client.tokenize(prompts[0]))


async def test_unprotected_job_would_cost_the_cache(strict_server: EmbeddedServer) -> None:
    clean_server = strict_server
    """The control: the same job sent to the character's slot without parking loses cache."""
    prompt = character_prompt("Seraphina", 400)
    async with LlamaClient(clean_server.url, save_dir=clean_server.save_dir) as client:
        baseline = await two_turns_cache_n(client, 0, prompt)
        await client.erase(0)

        async def naive() -> None:
            await client.completion(JOB_PROMPT, n_predict=400, id_slot=0, json_schema=SCHEMA)

        assert await two_turns_cache_n(client, 0, prompt, naive) < baseline


async def test_cancel_drops_the_job_and_restores_the_parked_cache(
    strict_server: EmbeddedServer,
) -> None:
    clean_server = strict_server
    save_dir = clean_server.save_dir
    assert save_dir is not None
    async with LlamaClient(clean_server.url, save_dir=save_dir) as client:
        prompts = await fill_slots(client)
        before = {s.id: s.n_prompt_tokens for s in await client.slots()}
        runner = JobRunner(client, MemorySettings(memory_n_predict=900), gate=asyncio.Lock())
        task: asyncio.Task[object] | None = None

        def progress(step: JobProgress) -> None:
            if step.stage == "generating" and step.tokens >= 16 and task is not None:
                task.cancel()  # delivered at the job's next read of the stream

        task = asyncio.ensure_future(runner.run(JOB_PROMPT, on_progress=progress))
        with pytest.raises(asyncio.CancelledError):
            await task
        slots = await client.slots()
        assert not slots[0].is_processing
        assert {s.id: s.n_prompt_tokens for s in slots} == before
        assert not [p for p in save_dir.iterdir() if is_private_name(p.name)]
        _, cache_n = await turn(client, 0, prompts[0] + " more")
        assert cache_n >= len(await client.tokenize(prompts[0])) - 1


async def test_borrow_needs_a_save_dir(clean_server: EmbeddedServer, tmp_path: Path) -> None:
    from kvtui.memory.jobs import JobError

    async with LlamaClient(clean_server.url) as client:
        with pytest.raises(JobError, match="save_dir"):
            await JobRunner(client, MemorySettings(memory_n_predict=400)).run(
                JOB_PROMPT, json_schema=SCHEMA
            )


async def test_summarize_job_routed_to_the_slot_it_extends_keeps_the_cache(
    strict_server: EmbeddedServer,
) -> None:
    """A Summarize-shaped job that extends the character's prompt runs in its own slot; the
    character's next turn still reuses the whole chat (a token may differ at the seam where the
    reply was generated: the job's prompt holds the reply's last token, the turn's cache not)."""
    from kvtui.memory.recognize import JobKind, recognize_job, route_job

    prompt = character_prompt("Seraphina", 400)
    instruction = (
        "\nIgnore previous instructions. Summarize the most important facts and events in the "
        "story so far.\n"
    )
    async with LlamaClient(strict_server.url, save_dir=strict_server.save_dir) as client:
        baseline = await two_turns_cache_n(client, 0, prompt)
        await client.erase(0)
        first, _ = await turn(client, 0, prompt)
        job_prompt = prompt + first + instruction
        shape = recognize_job(job_prompt)
        assert shape is not None and shape.kind is JobKind.SUMMARIZE
        route = route_job(job_prompt, {0: prompt + first}, utility_slot=None)
        assert (route.slot, route.why) == (0, "extends")
        await client.completion(job_prompt, n_predict=24, id_slot=0)
        _, with_job = await turn(client, 0, prompt + first + " and then Mira laughed.")
        assert with_job >= baseline - 1


async def test_second_server_takes_the_job(
    clean_server: EmbeddedServer, strict_server: EmbeddedServer
) -> None:
    async with LlamaClient(clean_server.url, save_dir=clean_server.save_dir) as client:
        await fill_slots(client)
        before = await client.slots()
        settings = MemorySettings(memory_server_url=strict_server.url, memory_n_predict=700)
        async with JobRunner(client, settings) as runner:
            result = await runner.run(JOB_PROMPT, json_schema=SCHEMA)
        assert result.mode == "server" and result.parked is None
        check_schema_valid(result.content)
        assert await client.slots() == before
        async with LlamaClient(strict_server.url) as memory_client:
            assert any(s.n_prompt_tokens for s in await memory_client.slots())


async def test_borrow_for_a_forwarded_request_keeps_the_cache(
    strict_server: EmbeddedServer,
) -> None:
    """What the proxy does with a MemoryBooks-shaped request and no utility slot: forward it
    inside ``runner.borrow()``; the character parked there keeps its cache."""
    from kvtui.memory.recognize import JobKind, recognize_job

    assert (shape := recognize_job(JOB_PROMPT)) is not None and shape.kind is JobKind.MEMORYBOOKS
    async with LlamaClient(strict_server.url, save_dir=strict_server.save_dir) as client:
        prompts = await fill_slots(client)
        first, _ = await turn(client, 0, prompts[0])
        follow_up = prompts[0] + first + " and then Mira laughed."
        await client.erase(0)
        await turn(client, 0, prompts[0])
        _, baseline = await turn(client, 0, follow_up)
        await client.erase(0)
        await turn(client, 0, prompts[0])

        runner = JobRunner(client, MemorySettings(), gate=asyncio.Lock())
        async with runner.borrow() as borrowed:
            assert borrowed.slot == 0 and borrowed.filename is not None
            forwarded = await client.completion(
                JOB_PROMPT, n_predict=700, id_slot=borrowed.slot, json_schema=SCHEMA
            )
        check_schema_valid(forwarded.content)
        _, with_job = await turn(client, 0, follow_up)
        assert with_job == baseline
