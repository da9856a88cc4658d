"""The replay's warmth figures: per-turn accounting, loss by reason, disk traffic.

Used by :mod:`benchmarks.replay`. Each variant's turns are accounted with kvtui's own
:class:`~kvtui.warmth.WarmthLedger`, the same way the proxy accounts them: the proxy's
``turns.jsonl`` when it wrote one (the router calls the ledger), else offline from the script,
where only a server restart and a chat switch are known facts: any other loss is then
``unattributed`` (the proxy did not say what it routed). Disk traffic comes from the proxy's
event log (tokens saved and restored) times the bytes per token of the saves it left.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.wire import Wire
from kvtui.store import SaveStore
from kvtui.warmth import SessionSummary, TurnDecision, TurnLog, WarmthLedger, summarize

_SAVED = re.compile(r"\] Saved .*?: (\d+) tokens")
_RESTORED = re.compile(r"\] (?:Restored|Loaded) .*?: (\d+) tokens")


@dataclass(frozen=True)
class Turn:
    """One generation of the script, as the accounting needs it."""

    chat: str
    speaker: str
    kind: str
    phase: str
    prompt: str
    after_restart: bool  # the first generation of this speaker since the server restarted
    after_switch: bool  # the first generation of this speaker since the chat changed


@dataclass
class Disk:
    read_tokens: int = 0
    written_tokens: int = 0
    bytes_per_token: float = 0.0

    @property
    def read_mb(self) -> float:
        return self.read_tokens * self.bytes_per_token / 1e6

    @property
    def written_mb(self) -> float:
        return self.written_tokens * self.bytes_per_token / 1e6


@dataclass
class Accounting:
    summary: SessionSummary
    source: str  # "proxy turns.jsonl" or "offline"
    by_phase: Counter[str] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)


def script_turns(steps: list[Any]) -> list[Turn]:
    """The generations of ``steps`` with the restart and chat-switch facts the script knows."""
    from benchmarks.replay import Generate, Restart

    turns: list[Turn] = []
    restarted: set[str] = set()
    last_chat: str | None = None
    switched: set[str] = set()
    seen: set[str] = set()
    for step in steps:
        if isinstance(step, Restart):
            restarted = set(seen)
            continue
        if not isinstance(step, Generate):
            continue
        if last_chat is not None and step.chat != last_chat:
            switched = set(seen)
        last_chat = step.chat
        key = f"{step.chat}/{step.speaker}"
        turns.append(
            Turn(
                step.chat,
                step.speaker,
                step.kind,
                step.phase,
                str(step.body["prompt"]),
                key in restarted,
                key in switched,
            )
        )
        restarted.discard(key)
        switched.discard(key)
        seen.add(key)
    return turns


async def account_offline(
    turns: list[Turn], timings: list[dict[str, Any]], tokenize_url: str | None
) -> Accounting:
    """Account ``turns`` (with the server's ``timings`` of each) with kvtui's ledger."""
    wire = Wire(tokenize_url) if tokenize_url else None

    async def tokenize(text: str, *, add_special: bool = True) -> list[int]:
        if wire is None:
            raise RuntimeError("no tokenizer")
        reply = wire.post("/tokenize", {"content": text, "add_special": add_special})
        return list(reply.json()["tokens"])

    ledger = WarmthLedger(None, tokenize=tokenize, ring=len(turns) + 1)
    by_phase: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    try:
        for turn, t in zip(turns, timings, strict=True):
            known = turn.after_restart or turn.after_switch
            d = TurnDecision(
                chat=turn.chat,
                character=turn.speaker,
                source="explicit",
                gen_type=turn.kind,
                slot=None,
                prompt=turn.prompt,
                server_restarted=turn.after_restart,
                chat_switched=turn.after_switch and not turn.after_restart,
                facts_known=known,
            )
            ledger.finish(ledger.begin(d), t)
            await ledger.drain()
            lost = ledger.records()[-1].lost_tokens
            by_phase[turn.phase] += lost
            by_kind[turn.kind] += lost
    finally:
        if wire is not None:
            wire.close()
    return Accounting(ledger.summary(), "offline", by_phase, by_kind)


def account_from_log(state_dir: Path) -> Accounting | None:
    """The proxy's own accounting, when it wrote ``turns.jsonl``."""
    path = state_dir / "turns.jsonl"
    if not path.exists():
        return None
    records = TurnLog(path).read()
    return Accounting(summarize(records), "proxy turns.jsonl") if records else None


def disk_traffic(proxy_log: Path | None, save_dir: Path) -> Disk:
    """Tokens saved and restored, from the proxy's event log; bytes per token from the saves."""
    disk = Disk()
    if proxy_log is not None and proxy_log.exists():
        text = proxy_log.read_text(errors="replace")
        disk.written_tokens = sum(int(n) for n in _SAVED.findall(text))
        disk.read_tokens = sum(int(n) for n in _RESTORED.findall(text))
    ratios = []
    store = SaveStore(save_dir)
    for entry in store.entries():
        meta = store.read_meta(entry.filename)
        if meta is not None and meta.n_saved and meta.n_written:
            ratios.append(meta.n_written / meta.n_saved)
    disk.bytes_per_token = statistics.median(ratios) if ratios else 528.0
    return disk


async def report_warmth(
    ctx: Any,
    runs: dict[str, list[Any]],
    turns: list[Turn],
    tokenize_url: str,
    policy: bool,
    floor: int | None = None,
) -> None:
    """The warmth figures: each variant's distance to the ideal, its losses by reason, disk."""
    from benchmarks.common import Figure, median, note
    from benchmarks.replay import IDEAL, NAME, POLICY, RAM

    ideal = median([t.prompt_n for t in runs[IDEAL]])
    ideal_t = runs[IDEAL][0]
    ideal_ratio = ideal_t.cache_n / max(1, ideal_t.cache_n + ideal_t.prompt_n) * 100
    if not policy:
        note(
            f"{POLICY}: not run: kvtui's settings have no skip_restore_when_ram_cached / "
            "save_when_protective (the router does not apply the policy)"
        )
    for variant, tallies in runs.items():
        if variant == IDEAL:
            continue
        first = tallies[0]
        prefilled = median([t.prompt_n for t in tallies])
        distance = prefilled - ideal
        kvtui = variant.startswith("kvtui")
        target, ok = ("<= 10% of ideal", distance <= 0.1 * ideal) if kvtui else (None, None)
        ctx.add(Figure(NAME, f"{variant}: tokens above the ideal", distance, "tok", target, ok))
        ratio = first.cache_n / max(1, first.cache_n + first.prompt_n) * 100
        points = ideal_ratio - ratio
        target, ok = ("<= 1 point", points <= 1) if kvtui else (None, None)
        ctx.add(Figure(NAME, f"{variant}: hit ratio below the ideal", points, "pt", target, ok))
        accounting = None
        if first.state_dir is not None:
            accounting = account_from_log(first.state_dir)
        if accounting is None:
            accounting = await account_offline(turns, first.timings, tokenize_url)
        s = accounting.summary
        reasons = ", ".join(f"{r.reason} {r.tokens:,} ({r.turns} turns)" for r in s.by_reason)
        note(
            f"{variant}: {s.lost_tokens:,} of {s.prefilled_tokens:,} prefilled tokens lost, "
            f"{s.new_tokens:,} new ({accounting.source}): {reasons or 'none'}"
        )
        if accounting.by_phase:
            phases = ", ".join(f"{p} {n:,}" for p, n in accounting.by_phase.items())
            kinds = ", ".join(f"{k} {n:,}" for k, n in accounting.by_kind.items())
            note(f"{variant}: lost by phase: {phases}; by generation type: {kinds}")
        split = restores_by_need(first.state_dir, turns) if kvtui else None
        if split is not None:
            note(
                f"{variant}: disk restores: {split[0]} where memory could not serve the prefix "
                f"(first turn after the restart or the chat switch), {split[1]} elsewhere"
            )
        if kvtui and first.save_dir is not None:
            disk = disk_traffic(first.proxy_log, first.save_dir)
            ctx.add(Figure(NAME, f"{variant}: disk read", disk.read_mb, "MB"))
            ctx.add(Figure(NAME, f"{variant}: disk written", disk.written_mb, "MB"))
            real = 163_840 / max(1.0, disk.bytes_per_token)
            note(
                f"{variant}: {disk.read_tokens:,} tokens restored, {disk.written_tokens:,} "
                f"saved ({disk.bytes_per_token:.0f} bytes/token here; on a 12B model at 160 KiB/"
                f"token: {disk.read_mb * real:,.0f} MB read, {disk.written_mb * real:,.0f} MB "
                f"written, {(disk.read_mb + disk.written_mb) * real / 1000:,.1f} s at 1 GB/s)"
            )
    ram = median([t.prompt_n for t in runs[RAM]])
    for variant in runs:
        if not variant.startswith("kvtui"):
            continue
        kv = median([t.prompt_n for t in runs[variant]])
        fewer = ram / kv if kv else float("inf")
        target, ok = (">= 1.5x", fewer >= 1.5) if variant != "kvtui proxy" else (None, None)
        ctx.add(Figure(NAME, f"{RAM} / {variant} prefilled tokens", fewer, "x", target, ok))
    bound = ram / ideal if ideal else float("inf")
    note_text = "the most any cache reaches against direct on this session"
    ctx.add(Figure(NAME, f"{RAM} / ideal", bound, "x", note=note_text))
    if floor:
        ctx.add(Figure(NAME, f"{RAM} / floor", ram / floor, "x", note="the true bound"))


def restores_by_need(state_dir: Path | None, turns: list[Turn]) -> tuple[int, int] | None:
    """Disk restores of a kvtui run: (where memory could not have served the prefix: a
    character's first turn after the restart or the chat switch, everywhere else)."""
    if state_dir is None or not (state_dir / "turns.jsonl").exists():
        return None
    records = TurnLog(state_dir / "turns.jsonl").read()
    if len(records) != len(turns):
        return None
    needed = other = 0
    for record, turn in zip(records, turns, strict=True):
        if record.restored:
            if turn.after_restart or turn.after_switch:
                needed += 1
            else:
                other += 1
    return needed, other
