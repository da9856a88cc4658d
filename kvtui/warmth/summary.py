"""Session totals from turn records: hit ratio, tokens and seconds saved, losses by reason, disk.

Seconds use the server's measured prefill speed: total ``prompt_n`` over total ``prompt_ms`` of
the turns that prefilled at least :data:`SPEED_MIN_TOKENS` tokens (a one-token prefill measures
the request overhead, not the speed). Disk time "on a real model" scales the tokens moved by
``real_model_bytes_per_token`` (160 KiB: about a 12B model with grouped-query attention at f16)
over ``disk_mb_per_second``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from kvtui.warmth.model import Reason, ReasonTotal, SessionSummary, SlotWarmth, TurnRecord

SPEED_MIN_TOKENS = 32


def prefill_speed(records: Iterable[TurnRecord]) -> float | None:
    """Tokens per second the server prefilled at, measured over ``records``."""
    tokens = 0
    ms = 0.0
    for r in records:
        if r.prompt_ms and r.prompt_n >= SPEED_MIN_TOKENS:
            tokens += r.prompt_n
            ms += r.prompt_ms
    return tokens / (ms / 1000) if ms > 0 else None


def summarize(
    records: Sequence[TurnRecord],
    *,
    real_model_bytes_per_token: int = 163_840,
    disk_mb_per_second: float = 1000.0,
) -> SessionSummary:
    speed = prefill_speed(records)
    tokens: Counter[str] = Counter()
    turns: Counter[str] = Counter()
    behind: Counter[str] = Counter()
    for r in records:
        for reason, lost in r.losses.items():
            tokens[reason] += lost
            turns[reason] += 1
            if reason == Reason.OLDER_SAVE.value and r.behind_messages is not None:
                behind[reason] += r.behind_messages
    by_reason = tuple(
        ReasonTotal(
            reason, n, turns[reason], n / speed if speed else None, behind.get(reason, None)
        )
        for reason, n in sorted(tokens.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    prefilled = sum(r.prompt_n for r in records)
    cached = sum(r.cache_n for r in records)
    lost = sum(r.lost_tokens for r in records)
    read_tokens = sum(r.restored_tokens or 0 for r in records if r.restored)
    write_tokens = sum(r.disk_write_tokens for r in records)
    moved = read_tokens + write_tokens
    disk_s = moved * real_model_bytes_per_token / (disk_mb_per_second * 1e6) if moved else 0.0
    return SessionSummary(
        turns=len(records),
        prefilled_tokens=prefilled,
        cached_tokens=cached,
        new_tokens=sum(r.new_tokens for r in records),
        lost_tokens=lost,
        by_reason=by_reason,
        prefill_tokens_per_second=speed,
        seconds_saved=cached / speed if speed else None,
        seconds_lost=lost / speed if speed else None,
        disk_read_bytes=sum(r.disk_read_bytes for r in records),
        disk_write_bytes=sum(r.disk_write_bytes for r in records),
        disk_read_tokens=read_tokens,
        disk_write_tokens=write_tokens,
        real_model_disk_seconds=disk_s,
        real_model_bytes_per_token=real_model_bytes_per_token,
        disk_mb_per_second=disk_mb_per_second,
        first_at=records[0].ts if records else None,
        last_at=records[-1].ts if records else None,
    )


def slot_warmth(records: Iterable[TurnRecord]) -> tuple[SlotWarmth, ...]:
    """Each slot's last turn, by slot number."""
    last: dict[int, TurnRecord] = {}
    for r in records:
        if r.slot is not None:
            last[r.slot] = r
    return tuple(
        SlotWarmth(
            slot=s,
            chat=r.chat,
            character=r.character,
            cached=r.cache_n,
            prompt=r.total,
            lost_tokens=r.lost_tokens,
            reason=r.reason,
            at=r.ts,
            behind_messages=r.behind_messages,
        )
        for s, r in sorted(last.items())
    )


def recall_totals(records: Iterable[TurnRecord]) -> dict[str, Any] | None:
    """What memory recall did over ``records`` (``None`` when no turn had a recall macro):
    turns by decision, tokens injected, cached-prefix tokens lost to it and its whole cost."""
    entries = [r.recall for r in records if r.recall is not None]
    if not entries:
        return None
    decisions = Counter(str(e.get("decision") or e.get("macro")) for e in entries)

    def total(name: str) -> int:
        return sum(int(e.get(name) or 0) for e in entries)

    return {
        "turns": len(entries),
        "by_decision": dict(sorted(decisions.items())),
        "injected_tokens": total("tokens"),
        "lost_tokens": total("lost_tokens"),
        "cost_tokens": total("cost_tokens"),
    }
