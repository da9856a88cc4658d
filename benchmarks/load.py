"""Benchmark: 50 concurrent generations for 10 characters on a 2-slot server, through the proxy.

A real ``kvtui proxy`` process (autosave every 5 messages, the default) in front of a llama-server
with 2 slots; 50 SillyTavern-shaped ``/completion`` requests (5 per character, each character
with its own ~1,000-token prompt, named by ``X-KVTUI-Chat`` / ``X-KVTUI-Character``) are sent at
once, then the same 50 at once to llama-server directly, alternating rounds after one warm-up
round each (every character's first prefill). Through the proxy every character is evicted and
restored again and again (a used character is saved first).

Reported: requests completed, each side's p50 and p95 latency (send to full reply) and their
ratio, and how many of the saves written hold their own character's prompt — the slot file's
token list read back, and the file restored into a slot to prove the server takes it.
"""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path

import httpx

from benchmarks.common import Context, Figure, heading, median, ms, note, percentile, start_server
from benchmarks.proxy import start_proxy
from benchmarks.st import st_body
from kvtui.llama import LlamaClient
from kvtui.store import SaveStore

NAME = "load"
CHAT = "Load Bench"
CHARACTERS = [f"Member{i}" for i in range(10)]
REQUESTS = 50
PAIRS = 13
"""Exchanges in each character's prompt: about 1,000 tokens (a save of about 530 KB)."""
RATIO_TARGET = 3.0
"""The proxy's p50 may be this many times direct's (it saves and restores on every eviction)."""


def prompt_for(character: str) -> str:
    lines = "".join(
        f"Alex: {character}, tell me about stone {i} of the old road.\n"
        f"{character}: Stone {i} is where {character} once rested.\n"
        for i in range(PAIRS)
    )
    return f"{character} is a member of the Forest Party.\n{lines}{character}:"


def file_tokens(path: Path) -> list[int]:
    """The token ids in a llama.cpp slot file (bare, or the server's token record form)."""
    with open(path, "rb") as fh:
        _magic, _version, count = struct.unpack("<III", fh.read(12))
        words = list(struct.unpack(f"<{count}i", fh.read(4 * count)))
    if len(words) >= 3 and words[0] == -1 and words[1] == 1:
        return words[3 : 3 + words[2]]
    return words


async def _round(url: str, via_proxy: bool) -> tuple[list[float], int]:
    """All requests at once; (each one's latency in seconds, how many completed)."""
    limits = httpx.Limits(max_connections=REQUESTS, max_keepalive_connections=REQUESTS)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:

        async def one(i: int) -> float | None:
            character = CHARACTERS[i % len(CHARACTERS)]
            body = st_body(prompt_for(character), ["\nAlex:"], stream=False, n_predict=4)
            headers = {"X-KVTUI-Chat": CHAT, "X-KVTUI-Character": character} if via_proxy else {}
            started = time.perf_counter()
            resp = await client.post("/completion", json=body, headers=headers)
            return time.perf_counter() - started if resp.status_code == 200 else None

        results = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
    done = [r for r in results if r is not None]
    return done, len(done)


async def _check_saves(server_url: str, save_dir: Path) -> tuple[int, int]:
    """(saves holding their own character's prompt and restoring, saves checked)."""
    store = SaveStore(save_dir)
    store.rescan()
    saves = [e for e in store.entries() if e.valid]
    good = 0
    async with LlamaClient(server_url, save_dir=save_dir) as client:
        expected = {c: await client.tokenize(prompt_for(c), add_special=True) for c in CHARACTERS}
        for entry in saves:
            tokens = file_tokens(save_dir / entry.filename)
            want = expected.get(entry.character, [])
            restored = await client.restore(0, entry.filename)
            if want and tokens[: len(want)] == want and restored.n_restored == len(tokens):
                good += 1
    return good, len(saves)


async def run(ctx: Context) -> None:
    heading("Load: 50 concurrent generations, 10 characters, 2 slots, through the proxy")
    server = start_server(ctx, NAME, n_slots=2, n_ctx=4096)
    assert server.save_dir is not None
    proxy = start_proxy(ctx, NAME, server.url, server.save_dir, None)
    reps = ctx.reps(3, 2)
    via: list[float] = []
    direct: list[float] = []
    completed = 0
    try:
        note(f"a warm-up round, then {reps} alternating rounds of {REQUESTS} requests at once")
        _, completed = await _round(proxy.url, True)  # every character's first prefill
        await _round(server.url, False)
        for _ in range(reps):
            lat, n = await _round(proxy.url, True)
            via += lat
            completed += n
            lat, _ = await _round(server.url, False)
            direct += lat
        proxy.stop()
        good, checked = await _check_saves(server.url, server.save_dir)
    finally:
        proxy.stop()
        server.stop()
    total = (reps + 1) * REQUESTS
    ctx.add(
        Figure(
            NAME, "requests completed through the proxy", completed, f"of {total}",
            target=f"{total}", ok=completed == total, headline=True,
        )
    )  # fmt: skip
    ctx.add(
        Figure(
            NAME, "saves holding and restoring their own character", good, f"of {checked}",
            target="all", ok=checked > 0 and good == checked, headline=True,
        )
    )  # fmt: skip
    if not via or not direct:
        return
    p50_via, p50_direct = ms(median(via)), ms(median(direct))
    ctx.add(Figure(NAME, "p50 latency through the proxy", p50_via, "ms"))
    ctx.add(Figure(NAME, "p50 latency direct", p50_direct, "ms"))
    ctx.add(Figure(NAME, "p95 latency through the proxy", ms(percentile(via, 95)), "ms"))
    ctx.add(Figure(NAME, "p95 latency direct", ms(percentile(direct, 95)), "ms"))
    ratio = p50_via / p50_direct if p50_direct else None
    ctx.add(
        Figure(
            NAME, "p50 proxy / direct", ratio, "×", target=f"≤ {RATIO_TARGET:g}×",
            ok=ratio is not None and ratio <= RATIO_TARGET, headline=True,
        )
    )  # fmt: skip
