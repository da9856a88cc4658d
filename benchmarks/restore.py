"""Benchmark 1: a restored cache versus a cold prefill, and kvtui's own cost of save/restore.

One slot holding 16k tokens. For prompts of 1k, 4k and the slot's full context, the time to the
first token of a one-token generation is measured after a kvtui restore (``KvService.load``, then
the completion) and after a cold prefill (the slot erased, then the same completion), alternating.

kvtui's overhead is the client's wall time minus what the server reports it spent
(``timings.save_ms`` / ``restore_ms``), measured three ways, alternating: a raw HTTP call (no
kvtui at all: the HTTP round trip and the server's task queue), kvtui's ``LlamaClient``, and
``KvService.save_slot`` / ``load`` (sidecar, rotation, slot book written to disk).
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.common import Context, Figure, heading, median, ms, note, start_server
from benchmarks.wire import Wire
from kvtui.llama.models import RestoreResult, SaveResult
from kvtui.service import KvService
from kvtui.settings import Settings

NAME = "restore"
SLOT_CTX = 16384
CHAT = "bench-restore"


def _tokens(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(32, 126) for _ in range(n)]


async def run(ctx: Context) -> None:
    heading("1. Restore versus prefill (one slot of 16k tokens)")
    server = start_server(ctx, NAME, n_slots=1, n_ctx=SLOT_CTX, cache_ram_mib=0)
    settings = Settings(
        server_url=server.url,
        save_dir=server.save_dir,
        state_dir=ctx.dir(NAME) / "state",
        max_autosaves=3,
    )
    service = KvService(settings)
    wire = Wire(server.url)
    try:
        await service.connect()
        per_slot = service.props.n_ctx if service.props else SLOT_CTX
        sizes = [(1024, "1k"), (4096, "4k"), (per_slot - 4, f"{per_slot // 1024}k (full slot)")]
        reps = ctx.reps(5, 3)
        note(f"slot context {per_slot} tokens, {reps} alternating repetitions per size")
        for n, label in sizes:
            await _ttft(ctx, service, n, label, reps)
        over_reps = ctx.reps(15, 6)
        note(f"save/restore overhead: {over_reps} alternating repetitions per size")
        for n, label in sizes:
            await _overhead(ctx, service, wire, n, label, over_reps)
    finally:
        wire.close()
        await service.aclose()
        server.stop()


async def _ttft(ctx: Context, service: KvService, n: int, label: str, reps: int) -> None:
    client = service.client
    tokens = _tokens(n, seed=n)
    await client.erase(0)
    await client.completion(tokens, n_predict=1, id_slot=0)
    source = await service.save_slot(0, chat=CHAT, character=f"ctx{n}", tag="source")

    parts: dict[str, list[float]] = {"load": [], "completion": [], "prompt_ms": []}

    async def restored() -> tuple[float, Any]:
        await client.erase(0)
        started = time.perf_counter()
        await service.load(source.filename, slot=0)
        loaded = time.perf_counter()
        result = await client.completion(tokens, n_predict=1, id_slot=0)
        ended = time.perf_counter()
        parts["load"].append(ms(loaded - started))
        parts["completion"].append(ms(ended - loaded))
        parts["prompt_ms"].append(result.timings.prompt_ms)
        return ended - started, result

    async def cold() -> tuple[float, Any]:
        await client.erase(0)
        started = time.perf_counter()
        result = await client.completion(tokens, n_predict=1, id_slot=0)
        return time.perf_counter() - started, result

    sides: dict[str, list[float]] = {"restore": [], "prefill": []}
    cached: dict[str, list[int]] = {"restore": [], "prefill": []}
    for rep in range(reps):
        order = [("restore", restored), ("prefill", cold)]
        for name, side in order if rep % 2 == 0 else reversed(order):
            seconds, result = await side()
            sides[name].append(seconds)
            cached[name].append(result.timings.cache_n)
    restore_ms, prefill_ms = ms(median(sides["restore"])), ms(median(sides["prefill"]))
    ratio = restore_ms / prefill_ms * 100
    ctx.add(Figure(NAME, f"{label}: TTFT after kvtui restore", restore_ms, "ms", headline=True))
    ctx.add(Figure(NAME, f"{label}: TTFT after cold prefill", prefill_ms, "ms", headline=True))
    note(
        f"{label}: after restore = KvService.load {median(parts['load']):.2f} ms + completion "
        f"{median(parts['completion']):.2f} ms (server prompt_ms "
        f"{median(parts['prompt_ms']):.2f} for the one uncached token)"
    )
    target, ok = (None, None) if n != 4096 else ("<= 10% at 4k", ratio <= 10.0)
    ctx.add(Figure(NAME, f"{label}: restore / prefill", ratio, "%", target, ok))
    if min(cached["restore"]) < n - 1 or max(cached["prefill"]) != 0:
        note(f"WARNING: cache_n after restore {cached['restore']}, after erase {cached['prefill']}")


async def _overhead(
    ctx: Context, service: KvService, wire: Wire, n: int, label: str, reps: int
) -> None:
    """Save and restore of an n-token slot: wall time minus the server's own save/restore ms."""
    client = service.client
    tokens = _tokens(n, seed=n)
    await client.erase(0)
    await client.completion(tokens, n_predict=1, id_slot=0)
    character = f"ctx{n}"
    seen: dict[str, Any] = {}
    real_save, real_restore = client.save, client.restore

    async def spy_save(slot: int, filename: str) -> SaveResult:
        seen["save"] = result = await real_save(slot, filename)
        return result

    async def spy_restore(slot: int, filename: str) -> RestoreResult:
        seen["restore"] = result = await real_restore(slot, filename)
        return result

    setattr(client, "save", spy_save)  # noqa: B010 - an instance attribute shadows the method
    setattr(client, "restore", spy_restore)  # noqa: B010
    latest = (await service.save_slot(0, chat=CHAT, character=character)).filename

    async def raw_save() -> tuple[float, float]:
        reply = wire.post("/slots/0?action=save", {"filename": "raw.bin"})
        return reply.seconds, float(reply.json()["timings"]["save_ms"])

    async def client_save() -> tuple[float, float]:
        started = time.perf_counter()
        result = await real_save(0, "client.bin")
        return time.perf_counter() - started, result.save_ms or 0.0

    async def service_save() -> tuple[float, float]:
        nonlocal latest
        started = time.perf_counter()
        outcome = await service.save_slot(0, chat=CHAT, character=character)
        seconds = time.perf_counter() - started
        latest = outcome.filename
        return seconds, seen["save"].save_ms or 0.0

    async def raw_restore() -> tuple[float, float]:
        reply = wire.post("/slots/0?action=restore", {"filename": "raw.bin"})
        return reply.seconds, float(reply.json()["timings"]["restore_ms"])

    async def client_restore() -> tuple[float, float]:
        started = time.perf_counter()
        result = await real_restore(0, "client.bin")
        return time.perf_counter() - started, result.restore_ms or 0.0

    async def service_restore() -> tuple[float, float]:
        started = time.perf_counter()
        await service.load(latest, slot=0)
        seconds = time.perf_counter() - started
        return seconds, seen["restore"].restore_ms or 0.0

    ways: list[tuple[str, Callable[[], Awaitable[tuple[float, float]]]]] = [
        ("save raw HTTP", raw_save),
        ("save LlamaClient", client_save),
        ("save KvService", service_save),
        ("restore raw HTTP", raw_restore),
        ("restore LlamaClient", client_restore),
        ("restore KvService", service_restore),
    ]
    over: dict[str, list[float]] = {name: [] for name, _ in ways}
    server_ms: dict[str, list[float]] = {"save": [], "restore": []}
    for rep in range(reps):
        for group in (ways[:3], ways[3:]):
            shift = rep % 3
            for name, way in group[shift:] + group[:shift]:
                wall, spent = await way()
                over[name].append(ms(wall) - spent)
                server_ms[name.split()[0]].append(spent)
    setattr(client, "save", real_save)  # noqa: B010
    setattr(client, "restore", real_restore)  # noqa: B010
    for action in ("save", "restore"):
        ctx.add(Figure(NAME, f"{label}: server {action}_ms", median(server_ms[action]), "ms"))
        for how in ("raw HTTP", "LlamaClient", "KvService"):
            key = f"{action} {how}"
            value = median(over[key])
            target, ok = (None, None)
            if how != "raw HTTP":
                target, ok = "<= 5 ms", value <= 5.0
            what = {
                "raw HTTP": "HTTP + server queue, no kvtui",
                "LlamaClient": "kvtui client",
                "KvService": "incl. sidecar, rotation, book",
            }[how]
            ctx.add(Figure(NAME, f"{label}: {action} overhead, {what}", value, "ms", target, ok))
