"""Benchmark: a memory job's wall time, and what it costs a character's next turn.

A character holds a 2k-token prompt in slot 0 of a four-slot server without the RAM prompt cache
(``--cache-ram 0``, so an evicted prompt is really gone). Its next turn extends that prompt; the
turn's ``cache_n`` (tokens reused from the slot) and prompt time are measured, alternating, with
nothing in between, with a memory job in the utility slot (``memory_slot = 3``), with a job in a
borrowed slot (no utility slot: slot 0 is the idle slot with the fewest tokens, so its occupant
is parked, the job runs, and the cache is restored), and — the control — the same job sent
straight to slot 0 as an unprotected extension's request would land. In the utility side slot 3
holds no character (it is reserved); in the others it holds one.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

from benchmarks.common import Context, Figure, heading, median, ms, note, start_server
from kvtui.llama.client import LlamaClient
from kvtui.memory.contract import memory_schema, parse_memory
from kvtui.memory.jobs import JobRunner
from kvtui.memory.settings import MemorySettings

NAME = "memory"
CHARACTER_TOKENS = 2048
SCHEMA = memory_schema(max_title=40, max_content=300, max_keywords=6)
JOB_PROMPT = (
    "Write a memory of the scene below as JSON.\n\n=== SCENE TRANSCRIPT ===\n"
    + "\n".join(
        f"{'Alex' if i % 2 else 'Seraphina'}: the forest party rests by the river, night {i}."
        for i in range(24)
    )
    + "\n\n=== END SCENE ===\n"
)


def _tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(32, 126) for _ in range(n)]


async def run(ctx: Context) -> None:
    heading("Memory jobs: wall time, and the character's next-turn cache_n with and without")
    server = start_server(ctx, NAME, n_slots=4, n_ctx=4 * 4096, cache_ram_mib=0)
    client = LlamaClient(server.url, save_dir=server.save_dir)
    character = _tokens(CHARACTER_TOKENS, seed=1)
    others = {slot: _tokens(CHARACTER_TOKENS + 256 * slot, seed=slot + 1) for slot in (1, 2, 3)}
    utility = JobRunner(client, MemorySettings(memory_slot=3, memory_n_predict=900))
    borrowed = JobRunner(client, MemorySettings(memory_n_predict=900), gate=asyncio.Lock())
    reps = ctx.reps(5, 2)
    note(
        f"character prompt {CHARACTER_TOKENS} tokens in slot 0, {reps} alternating repetitions; "
        "slots 1-3 hold larger prompts (so a borrow takes slot 0)"
    )
    results: dict[str, list[tuple[int, float]]] = {}
    walls: dict[str, list[float]] = {"utility": [], "borrowed": []}
    valid = 0

    async def job(runner: JobRunner, mode: str) -> None:
        nonlocal valid
        result = await runner.run(JOB_PROMPT, json_schema=SCHEMA)
        walls[mode].append(result.wall_s)
        parse_memory(result.content, stop_type=result.stop_type)
        valid += 1

    async def naive() -> None:
        await client.completion(JOB_PROMPT, n_predict=900, id_slot=0, json_schema=SCHEMA)

    sides: list[tuple[str, Callable[[], Awaitable[None]] | None]] = [
        ("no job", None),
        ("utility slot", lambda: job(utility, "utility")),
        ("borrowed slot", lambda: job(borrowed, "borrowed")),
        ("unprotected job", naive),
    ]
    try:
        for rep in range(reps):
            order = sides if rep % 2 == 0 else list(reversed(sides))
            for name, between in order:
                for slot, prompt in others.items():
                    await client.erase(slot)
                    if not (slot == 3 and name == "utility slot"):  # reserved: nobody there
                        await client.completion(prompt, n_predict=1, id_slot=slot)
                await client.erase(0)
                await client.completion(character, n_predict=1, id_slot=0)
                if between is not None:
                    await between()
                follow = await client.completion(
                    character + _tokens(32, seed=rep + 100), n_predict=1, id_slot=0
                )
                results.setdefault(name, []).append(
                    (follow.timings.cache_n, follow.timings.prompt_ms)
                )
    finally:
        await utility.aclose()
        await borrowed.aclose()
        await client.aclose()
        server.stop()

    baseline = median([c for c, _ in results["no job"]])
    for name, rows in results.items():
        cache_n = median([c for c, _ in rows])
        protected = name in ("utility slot", "borrowed slot")
        ctx.add(
            Figure(
                NAME,
                f"next-turn cache_n after {name}",
                cache_n,
                "tokens",
                target=f"= {baseline:.0f} (no job)" if protected else None,
                ok=(min(c for c, _ in rows) == baseline) if protected else None,
                headline=protected,
            )
        )
        ctx.add(
            Figure(NAME, f"next-turn prompt time after {name}", median([p for _, p in rows]), "ms")
        )
    for mode, values in walls.items():
        ctx.add(Figure(NAME, f"memory job wall time ({mode})", ms(median(values)), "ms",
                       headline=True))  # fmt: skip
    ctx.add(Figure(NAME, "schema-valid memories", valid, f"of {2 * reps}"))
