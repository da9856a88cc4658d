"""The warmth package's parts without a server: the log's bound, stats, policy, the RAM model."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kvtui.settings import load_settings
from kvtui.warmth import (
    RamCacheInfo,
    TurnDecision,
    TurnLog,
    TurnRecord,
    WarmthLedger,
    WarmthPolicy,
    should_restore_from_disk,
    should_save,
    summarize,
    turns_path,
)
from kvtui.warmth.accounting import common_prefix, split_turn
from kvtui.warmth.cli import add_stats_parser, parse_since, run_stats

ON = RamCacheInfo(True, 8192, "command line", "")
OFF = RamCacheInfo(False, 0, "command line", "")
AWARE = WarmthPolicy(skip_restore_when_ram_cached=True, save_when_protective=True)


def record(i: int, **kw: object) -> TurnRecord:
    base: dict[str, object] = {
        "ts": (datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=i)).isoformat(),
        "chat": "camp",
        "chat_title": None,
        "character": "Kael" if i % 2 else "Mira",
        "source": "explicit",
        "gen_type": "normal",
        "slot": i % 2,
        "restored": None,
        "prompt_n": 100,
        "cache_n": 900,
        "new_tokens": 60,
        "lost_tokens": 40,
        "reason": "server_restart",
        "first_diff": 10,
        "disk_read_bytes": 0,
        "disk_write_bytes": 528_000,
        "losses": {"server_restart": 40},
        "prompt_ms": 50.0,
        "disk_write_tokens": 1000,
    }
    base.update(kw)
    return TurnRecord(**base)  # type: ignore[arg-type]


def test_common_prefix() -> None:
    assert common_prefix("abcdef", "abcxyz") == 3
    assert common_prefix("abc", "abcdef") == 3
    assert common_prefix("", "abc") == 0
    assert common_prefix("x" * 100_000 + "a", "x" * 100_000 + "b") == 100_000


async def test_without_a_tokenizer_positions_are_estimated() -> None:
    previous = "S" * 100
    prompt = "S" * 50 + "T" * 60  # changed at 50 of 110 characters: ~50 of 110 tokens reusable
    d = TurnDecision("c", "k", "explicit", "normal", 0, prompt)
    split = await split_turn(d, 60, 50, previous=previous, previous_tokens=100, count=None)
    assert split.estimated and split.first_diff == 50 and split.first_diff_tokens == 50
    assert split.reason == "prompt_changed_early"
    assert split.new_tokens + split.lost_tokens == 60
    assert split.new_tokens == 10 and split.losses == {"prompt_changed_early": 50}


async def test_unknown_routing_facts_are_unattributed() -> None:
    d = TurnDecision("c", "k", "explicit", "normal", 0, "abc def", facts_known=False)
    split = await split_turn(d, 80, 0, previous="abc", previous_tokens=50, count=None)
    assert split.reason is None and split.losses == {"unattributed": 50}


def test_the_log_keeps_the_newest_lines(tmp_path: Path) -> None:
    log = TurnLog(tmp_path / "turns.jsonl", max_lines=20, slack=5)
    for i in range(60):
        log.append([record(i)])
    lines = (tmp_path / "turns.jsonl").read_text().splitlines()
    assert 20 <= len(lines) <= 25
    assert [r.ts for r in log.read()][-1] == record(59).ts
    assert (tmp_path / "turns.jsonl").stat().st_mode & 0o777 == 0o600
    with (tmp_path / "turns.jsonl").open("a") as fh:
        fh.write('not json\n{"ts": 1}\n')
    assert len(log.read()) == len(lines)  # damaged lines are skipped, nothing else lost


def test_summary_adds_up() -> None:
    clean = record(10, reason=None, losses={}, lost_tokens=0, new_tokens=100)
    records = [record(i) for i in range(10)] + [clean]
    s = summarize(records, real_model_bytes_per_token=100_000, disk_mb_per_second=100)
    assert s.prefilled_tokens == 1100 and s.cached_tokens == 9900
    assert s.lost_tokens == sum(r.tokens for r in s.by_reason) == 400
    assert s.prefilled_tokens - s.new_tokens == 1100 - (10 * 60 + 100) == s.lost_tokens
    assert s.prefill_tokens_per_second == pytest.approx(100 / 0.05)
    assert s.seconds_saved == pytest.approx(9900 / 2000)
    assert s.real_model_disk_seconds == pytest.approx(11 * 1000 * 100_000 / 100e6)
    assert s.hit_ratio == pytest.approx(0.9)
    assert s.invariant_holds and s.to_json()["invariant_holds"] is True
    broken = summarize([record(0, lost_tokens=41)])  # a line whose losses do not add up
    assert not broken.invariant_holds


def test_stats_json_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(tmp_path / "none.toml", state_dir=tmp_path / "state")
    parser = argparse.ArgumentParser()
    add_stats_parser(parser.add_subparsers(dest="command"))
    assert run_stats(parser.parse_args(["stats"]), settings) == 0
    assert "No turns recorded yet" in capsys.readouterr().out
    TurnLog(turns_path(settings.state_dir)).append(record(i) for i in range(6))
    assert run_stats(parser.parse_args(["stats", "--json", "--character", "Kael"]), settings) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["turns"] == 3
    assert data["summary"]["by_reason"][0]["reason"] == "server_restart"
    assert [s["slot"] for s in data["slots"]] == [1]
    assert run_stats(parser.parse_args(["stats", "--turns", "--last", "2"]), settings) == 0
    out = capsys.readouterr().out
    assert "lost tokens by reason" in out and "900/1,000 cached · server_restart" in out
    assert run_stats(parser.parse_args(["stats", "--since", "yesterday"]), settings) == 2
    assert "--since" in capsys.readouterr().err


def test_parse_since() -> None:
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert parse_since("2h", now) == now - timedelta(hours=2)
    assert parse_since("2026-12-01T10:00", now) == datetime(2026, 12, 1, 10, tzinfo=UTC)


def test_restore_policy() -> None:
    seed = WarmthPolicy()
    kw = {"has_save": True, "save_tokens": 900, "ram": ON, "ram_tokens": 1000}
    assert should_restore_from_disk(seed, **kw).act  # type: ignore[arg-type]
    assert not should_restore_from_disk(AWARE, **kw).act  # type: ignore[arg-type]
    assert should_restore_from_disk(AWARE, **{**kw, "ram": OFF}).act  # type: ignore[arg-type]
    assert should_restore_from_disk(AWARE, **{**kw, "ram_tokens": None}).act  # type: ignore[arg-type]
    assert should_restore_from_disk(AWARE, **{**kw, "ram_tokens": 500}).act  # type: ignore[arg-type]
    assert should_restore_from_disk(AWARE, **kw, server_restarted=True).act  # type: ignore[arg-type]
    assert should_restore_from_disk(AWARE, **kw, erased=True).act  # type: ignore[arg-type]
    assert not should_restore_from_disk(AWARE, **{**kw, "has_save": False}).act  # type: ignore[arg-type]


def test_save_policy() -> None:
    kw = {"usage": 2, "tokens": 4000, "prefill_tokens_per_second": 50.0, "evicting": True}
    real = 163_840
    assert should_save(WarmthPolicy(), saved_tokens=4000, bytes_per_token=real, **kw).act  # type: ignore[arg-type]
    assert not should_save(AWARE, saved_tokens=4000, bytes_per_token=real, **kw).act  # type: ignore[arg-type]
    # 200 unsaved tokens: 4 s of prefill on CPU against 0.66 s to write 655 MB: save.
    assert should_save(AWARE, saved_tokens=3800, bytes_per_token=real, **kw).act  # type: ignore[arg-type]
    fast = {**kw, "prefill_tokens_per_second": 20_000.0}
    assert not should_save(AWARE, saved_tokens=3800, bytes_per_token=real, **fast).act  # type: ignore[arg-type]
    unused = {**kw, "usage": 0}
    assert not should_save(WarmthPolicy(), saved_tokens=0, bytes_per_token=real, **unused).act  # type: ignore[arg-type]
    # Not due by the seed's every N: still saved when it protects more prefill than it costs.
    after = {**kw, "evicting": False, "autosave_due": False}
    assert not should_save(WarmthPolicy(), saved_tokens=3800, bytes_per_token=real, **after).act  # type: ignore[arg-type]
    assert should_save(AWARE, saved_tokens=3800, bytes_per_token=real, **after).act  # type: ignore[arg-type]
    assert not should_save(AWARE, saved_tokens=0, bytes_per_token=real, **unused).act  # type: ignore[arg-type]


def test_policy_reads_settings_when_they_have_the_fields() -> None:
    class WithFields:
        skip_restore_when_ram_cached = True
        save_cost_ratio = 2.0

    policy = WarmthPolicy.from_settings(WithFields())
    assert policy.skip_restore_when_ram_cached and policy.save_cost_ratio == 2.0
    assert not policy.save_when_protective
    assert WarmthPolicy.from_settings(object()) == WarmthPolicy()


async def test_the_ram_model_follows_slot_changes(tmp_path: Path) -> None:
    ledger = WarmthLedger(None)
    ledger.configure_ram_cache(ON, bytes_per_token=528, n_ctx_total=4096)

    async def turn(character: str, slot: int, **kw: object) -> None:
        d = TurnDecision("camp", character, "explicit", "normal", slot, f"{character} story", **kw)  # type: ignore[arg-type]
        ledger.finish(ledger.begin(d), {"prompt_n": 100, "cache_n": 0, "predicted_n": 10})
        await ledger.drain()

    await turn("Kael", 0)
    await turn("Mira", 0)  # the server moves Kael's 110 tokens to memory
    assert ledger.ram_cache_holds("camp", "Kael") == 110
    await turn("Kael", 0)  # ... and back into the slot; Mira goes to memory
    assert ledger.ram_cache_holds("camp", "Kael") is None
    assert ledger.ram_cache_holds("camp", "Mira") == 110
    await turn("Brann", 0, restored="brann.bin")  # a disk restore pushes nothing to memory
    assert ledger.ram_cache_holds("camp", "Kael") is None
    ledger.note_server_restart()
    assert ledger.ram_cache_holds("camp", "Mira") is None
    assert [s.character for s in ledger.slots()] == ["Brann"]


def test_the_service_layer_never_imports_textual() -> None:
    code = (
        "import sys, kvtui.warmth, kvtui.warmth.cli\n"
        "print(any(m == 'textual' or m.startswith('textual.') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_begin_routed_carries_the_routing_facts(tmp_path: Path) -> None:
    from kvtui.service.outcomes import LoadOutcome, RouteDecision, SaveOutcome
    from kvtui.warmth.bridge import begin_routed

    (tmp_path / "kael.bin").write_bytes(b"x" * 5392)
    ledger = WarmthLedger(None)
    kw = {"chat": "camp", "source": "explicit", "gen_type": "normal", "save_dir": tmp_path}
    mira_out = RouteDecision(0, "camp", "Kael", False, None, None, "Mira")
    ticket = begin_routed(ledger, mira_out, character="Kael", prompt="Kael story", **kw)  # type: ignore[arg-type]
    assert not ticket.decision.resident and not ticket.decision.evicted_unsaved
    saved = SaveOutcome(0, "camp", "Kael", "kael.bin", 10, 5392, None)
    restored = LoadOutcome(1, "camp", "Mira", "kael.bin", 10, False)
    back = RouteDecision(1, "camp", "Mira", False, restored, saved, "Kael")
    ticket = begin_routed(ledger, back, character="Mira", prompt="Mira story", **kw)  # type: ignore[arg-type]
    d = ticket.decision
    assert d.evicted_unsaved  # Mira was evicted without a save before
    assert (d.restored, d.restored_tokens, d.disk_read_bytes) == ("kael.bin", 10, 5392)
    assert (d.disk_write_bytes, d.disk_write_tokens) == (5392, 10)
    ledger.note_server_restart()
    again = begin_routed(ledger, None, character="Kael", prompt="Kael story 2", **kw)  # type: ignore[arg-type]
    assert again.decision.server_restarted and not again.decision.evicted_unsaved
    ledger.note_chat_switch()
    switched = begin_routed(ledger, None, character="Mira", prompt="Mira 2", **kw)  # type: ignore[arg-type]
    assert switched.decision.chat_switched and switched.decision.server_restarted


async def test_quiet_generations_are_not_the_characters_previous_prompt() -> None:
    ledger = WarmthLedger(None)
    story = "Kael's story. " * 20

    async def turn(prompt: str, gen_type: str, prompt_n: int, cache_n: int) -> TurnRecord:
        d = TurnDecision("camp", "Kael", "explicit", gen_type, 0, prompt)
        ledger.finish(ledger.begin(d), {"prompt_n": prompt_n, "cache_n": cache_n})
        await ledger.drain()
        return ledger.records()[-1]

    await turn(story + "User: hi\nKael:", "normal", 100, 0)
    await turn("Summarize the chat so far.", "quiet", 10, 0)
    after = await turn(story + "User: hi\nKael: hello\nUser: go\nKael:", "normal", 30, 80)
    assert after.first_diff == len(story + "User: hi\nKael:")
    assert (after.new_tokens, after.lost_tokens) == (10, 20)  # 20 of the 100 were not reused
