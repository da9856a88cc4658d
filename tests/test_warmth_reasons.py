"""The warmth ledger on a real llama-server: each loss reason forced, and the sum invariant.

Every turn's ``prompt_n``/``cache_n`` come from real completions on the embedded server (with
its default host-memory prompt cache: slots are erased, not overwritten, where a test needs a
cache to be really gone). The decisions are what the router would pass in each situation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama import LlamaClient
from kvtui.warmth import TurnDecision, TurnLog, WarmthLedger, turns_path
from kvtui.warmth.accounting import TAIL_SLACK

SYSTEM = "Write the next reply in a fictional roleplay. Stay in character. "
CARD = "Kael is a quiet ranger of the Forest Party who knows every trail. "
LINES = [
    "User: Where does the path lead?",
    "Kael: East, to the old bridge over the river.",
    "User: Is it safe to cross at night?",
    "Kael: Only with a lantern and a steady hand.",
    "User: Then we wait for dawn.",
    "Kael: Dawn it is. Sleep now.",
    "User: Good night, Kael.",
]


def chat_prompt(turn: int, system: str = SYSTEM, card: str = CARD) -> str:
    """Kael's prompt for his ``turn``-th reply (0-based): the chat so far, then ``Kael:``."""
    return system + card + "\n" + "\n".join(LINES[: 2 * turn + 1]) + "\nKael:"


def decision(prompt: str, slot: int = 0, **kw: Any) -> TurnDecision:
    base: dict[str, Any] = {
        "chat": "camp",
        "character": "Kael",
        "source": "explicit",
        "gen_type": "normal",
        "slot": slot,
        "prompt": prompt,
    }
    base.update(kw)
    return TurnDecision(**base)


@pytest.fixture
async def client(clean_server: EmbeddedServer) -> AsyncIterator[LlamaClient]:
    async with LlamaClient(clean_server.url, save_dir=clean_server.save_dir) as c:
        yield c


async def turn(
    ledger: WarmthLedger, client: LlamaClient, d: TurnDecision, *, written: int = 0
) -> Any:
    """Route ``d`` in the ledger, run its completion for real, finish, and return the record."""
    ticket = ledger.begin(d)
    assert d.prompt is not None and d.slot is not None
    result = await client.completion(d.prompt, n_predict=1, id_slot=d.slot, temperature=0.0)
    ledger.finish(ticket, result.timings.model_dump(), disk_write_bytes=written)
    await ledger.drain()
    return ledger.records()[-1]


async def test_a_plain_next_turn_loses_nothing(client: LlamaClient, tmp_path: Path) -> None:
    ledger = WarmthLedger(tmp_path, tokenize=client.tokenize)
    first = await turn(ledger, client, decision(chat_prompt(0)))
    assert (first.new_tokens, first.lost_tokens, first.reason) == (first.prompt_n, 0, None)
    second = await turn(ledger, client, decision(chat_prompt(1)))
    assert second.cache_n >= first.total - TAIL_SLACK - 1
    assert second.lost_tokens == 0 and second.reason is None
    assert second.new_tokens == second.prompt_n
    assert second.first_diff == len(chat_prompt(0))  # it extends the previous prompt


async def test_evicted_without_save(client: LlamaClient, tmp_path: Path) -> None:
    ledger = WarmthLedger(tmp_path, tokenize=client.tokenize)
    first = await turn(ledger, client, decision(chat_prompt(0)))
    await client.erase(0)  # what an eviction without a save leaves (memory holds nothing)
    d = decision(chat_prompt(2), resident=False, evicted_unsaved=True)
    second = await turn(ledger, client, d)
    assert second.cache_n <= 1
    assert second.reason == "evicted_unsaved"
    assert second.lost_tokens == first.total - second.cache_n
    assert second.new_tokens == second.total - first.total
    assert second.losses == {"evicted_unsaved": second.lost_tokens}


async def test_chat_switch_and_no_save(client: LlamaClient, tmp_path: Path) -> None:
    ledger = WarmthLedger(tmp_path, tokenize=client.tokenize)
    await turn(ledger, client, decision(chat_prompt(0)))
    await client.erase(0)
    switched = await turn(ledger, client, decision(chat_prompt(1), chat_switched=True))
    assert switched.reason == "chat_switch" and switched.lost_tokens > 0
    await client.erase(0)
    unsaved = await turn(ledger, client, decision(chat_prompt(2), resident=False))
    assert unsaved.reason == "no_save" and unsaved.lost_tokens == switched.total - unsaved.cache_n


async def test_older_save(client: LlamaClient, tmp_path: Path) -> None:
    ledger = WarmthLedger(tmp_path, tokenize=client.tokenize)
    await turn(ledger, client, decision(chat_prompt(0)))
    saved = await client.save(0, "kael-old.bin")
    second = await turn(ledger, client, decision(chat_prompt(2)))
    await client.erase(0)
    restored = await client.restore(0, "kael-old.bin")
    d = decision(
        chat_prompt(3),
        resident=False,
        restored="kael-old.bin",
        restored_tokens=restored.n_restored,
        disk_read_bytes=restored.n_read,
    )
    third = await turn(ledger, client, d)
    assert restored.n_restored == saved.n_saved
    assert third.reason == "older_save"
    assert third.cache_n >= saved.n_saved - 2  # the old save's prefix was reused
    assert third.lost_tokens == second.total - third.cache_n
    assert third.disk_read_bytes == restored.n_read > 0


async def test_changed_system_prompt_reports_the_first_difference(
    client: LlamaClient, tmp_path: Path
) -> None:
    ledger = WarmthLedger(tmp_path, tokenize=client.tokenize)
    first = await turn(ledger, client, decision(chat_prompt(1)))
    changed_system = SYSTEM.replace("Stay in character.", "Never break character.")
    position = next(
        i for i, (a, b) in enumerate(zip(SYSTEM, changed_system, strict=False)) if a != b
    )
    prompt = chat_prompt(3, system=changed_system)
    second = await turn(ledger, client, decision(prompt))
    assert second.reason == "prompt_changed_early"
    assert second.first_diff == position
    prefix_tokens = len(await client.tokenize(prompt[:position], add_special=True))
    assert second.first_diff_tokens == prefix_tokens
    assert abs(second.cache_n - prefix_tokens) <= 2  # the server reused up to the change
    # Genuinely new: the growth past the previous prompt's length; the rest is lost.
    assert second.new_tokens == second.total - first.total
    assert second.lost_tokens == first.total - second.cache_n
    assert not second.estimated


async def test_fingerprint_identity_is_unsure(client: LlamaClient, tmp_path: Path) -> None:
    ledger = WarmthLedger(tmp_path, tokenize=client.tokenize)
    first = await turn(ledger, client, decision(chat_prompt(1), source="inferred"))
    d = decision(chat_prompt(3), slot=1, character="unnamed-1a2b3c4d", source="fingerprint")
    second = await turn(ledger, client, d)
    assert second.cache_n <= 1  # another slot: nothing reused
    assert second.reason == "identity_unsure"
    assert second.lost_tokens == first.total - second.cache_n


async def test_server_restart(tmp_path: Path) -> None:
    with EmbeddedServer(save_dir=tmp_path / "saves", n_slots=2, n_ctx=2048) as server:
        async with LlamaClient(server.url) as client:
            ledger = WarmthLedger(tmp_path, tokenize=client.tokenize)
            first = await turn(ledger, client, decision(chat_prompt(0)))
            server.restart()
            await client.wait_until_ready()
            ledger.note_server_restart()
            second = await turn(ledger, client, decision(chat_prompt(2), server_restarted=True))
    assert second.reason == "server_restart"
    assert second.lost_tokens == first.total - second.cache_n


async def test_sum_invariant_against_the_servers_own_totals(
    client: LlamaClient, tmp_path: Path
) -> None:
    """Lost tokens by reason == the server's prompt_n total (from /metrics) minus new tokens."""
    ledger = WarmthLedger(tmp_path, tokenize=client.tokenize)
    before = await client.metrics()
    assert before is not None
    start = before["llamacpp:prompt_tokens_total"]
    await turn(ledger, client, decision(chat_prompt(0)))
    await turn(ledger, client, decision(chat_prompt(0), gen_type="swipe"))
    await client.erase(0)
    await turn(ledger, client, decision(chat_prompt(2), resident=False, evicted_unsaved=True))
    changed = SYSTEM.replace("fictional", "playful")
    await turn(ledger, client, decision(chat_prompt(3, system=changed)))
    await turn(ledger, client, replace(decision(chat_prompt(0), slot=2), character="Mira"))
    after = await client.metrics()
    assert after is not None
    server_prefilled = int(after["llamacpp:prompt_tokens_total"] - start)
    records = TurnLog(turns_path(tmp_path)).read()
    assert len(records) == 5
    assert sum(r.prompt_n for r in records) == server_prefilled
    summary = ledger.summary()
    by_reason = sum(r.tokens for r in summary.by_reason)
    assert by_reason == summary.lost_tokens == server_prefilled - summary.new_tokens
    assert summary.invariant_holds
    assert {r.reason for r in summary.by_reason} == {"evicted_unsaved", "prompt_changed_early"}
    assert all(r.lost_tokens == sum(r.losses.values()) for r in records)
