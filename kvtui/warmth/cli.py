"""``kvtui stats [--json]``: the warmth accounting read back from ``turns.jsonl``, headless.

The lead registers it: ``add_stats_parser(subparsers)`` in the parser, ``run_stats(args,
settings)`` to run it. Exit codes as the rest of the CLI: 0 ok, 1 failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from kvtui.settings import Settings
from kvtui.warmth.log import TurnLog, turns_path
from kvtui.warmth.model import SessionSummary, TurnRecord, reason_text
from kvtui.warmth.policy import WarmthPolicy
from kvtui.warmth.summary import recall_totals, slot_warmth, summarize

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def add_stats_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``stats`` to an ``add_subparsers()`` object; returns its parser."""
    text = "why turns re-prefilled: hit ratio, tokens and time saved, losses by reason, disk"
    p: argparse.ArgumentParser = subparsers.add_parser("stats", help=text, description=text)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--chat", help="only this chat")
    p.add_argument("--character", help="only this character")
    p.add_argument("--since", help="only turns newer than this: 30m, 2h, 1d, or an ISO time")
    p.add_argument("--last", type=int, metavar="N", help="only the newest N turns")
    p.add_argument("--turns", action="store_true", help="also list each turn")
    return p


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30m`` / ``2h`` / ``1d`` before now, or an ISO time (UTC when no zone is given)."""
    now = now or datetime.now(UTC)
    match = _SPAN.match(text)
    if match:
        value, unit = float(match.group(1)), _UNITS[match.group(2)]
        return now - timedelta(**{unit: value})
    when = datetime.fromisoformat(text.strip())
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def select(
    records: list[TurnRecord],
    *,
    chat: str | None = None,
    character: str | None = None,
    since: datetime | None = None,
    last: int | None = None,
) -> list[TurnRecord]:
    out = [
        r
        for r in records
        if (chat is None or r.chat == chat or r.chat_title == chat)
        and (character is None or r.character == character)
        and (since is None or r.when >= since)
    ]
    return out[-last:] if last else out


def run_stats(args: argparse.Namespace, settings: Settings) -> int:
    since = None
    if getattr(args, "since", None):
        try:
            since = parse_since(args.since)
        except ValueError:
            print(
                f"kvtui stats: --since {args.since!r} is not a span (30m, 2h, 1d) or an ISO "
                "time such as 2026-12-01T21:00.",
                file=sys.stderr,
            )
            return EXIT_USAGE
    last = getattr(args, "last", None)
    if last is not None and last < 1:
        print("kvtui stats: --last needs a positive number of turns.", file=sys.stderr)
        return EXIT_USAGE
    path = turns_path(settings.state_dir)
    records = select(
        TurnLog(path).read(),
        chat=getattr(args, "chat", None),
        character=getattr(args, "character", None),
        since=since,
        last=last,
    )
    policy = WarmthPolicy.from_settings(settings)
    summary = summarize(
        records,
        real_model_bytes_per_token=policy.real_model_bytes_per_token,
        disk_mb_per_second=policy.disk_mb_per_second,
    )
    if getattr(args, "json", False):
        data: dict[str, Any] = {
            "log": str(path),
            "summary": summary.to_json(),
            "slots": [vars_of(s) for s in slot_warmth(records)],
        }
        data["recall"] = recall_totals(records)
        if getattr(args, "turns", False):
            data["turns"] = [r.to_json() for r in records]
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return EXIT_OK
    if not records:
        print(
            f"No turns recorded yet in {path}. Run kvtui proxy (or the dashboard) and chat; "
            "every routed generation is recorded there."
        )
        return EXIT_OK
    print(render(summary))
    recall = recall_totals(records)
    if recall is not None:
        print(render_recall(recall))
    for s in slot_warmth(records):
        print(f"  slot {s.slot}: {s.character} ({s.chat}) {s.label}")
    if getattr(args, "turns", False):
        print()
        for r in records:
            why = f" {reason_text(r.reason, r.behind_messages)}" if r.reason else ""
            print(
                f"  {r.ts[:19]} slot {r.slot} {r.character}: {r.gen_type} "
                f"{r.cache_n:,}/{r.total:,} cached, new {r.new_tokens:,}, "
                f"lost {r.lost_tokens:,}{why}{_recall_of(r)}"
            )
    return EXIT_OK


def vars_of(obj: Any) -> dict[str, Any]:
    return dict(vars(obj))


def _seconds(value: float | None) -> str:
    return "?" if value is None else f"{value:,.1f} s"


def render(s: SessionSummary) -> str:
    speed = f"{s.prefill_tokens_per_second:,.0f} tok/s" if s.prefill_tokens_per_second else "?"
    lines = [
        f"{s.turns} turns from {s.first_at or '?'} to {s.last_at or '?'}",
        f"hit ratio {s.hit_ratio * 100:.1f}%: {s.cached_tokens:,} tokens from cache, "
        f"{s.prefilled_tokens:,} prefilled ({s.new_tokens:,} new, {s.lost_tokens:,} lost)",
        f"measured prefill {speed}: {_seconds(s.seconds_saved)} saved, "
        f"{_seconds(s.seconds_lost)} lost",
        f"disk: {s.disk_read_mb:,.1f} MB read, {s.disk_write_mb:,.1f} MB written "
        f"({s.disk_read_tokens + s.disk_write_tokens:,} tokens moved; on a real model at "
        f"{s.real_model_bytes_per_token:,} bytes/token and {s.disk_mb_per_second:,.0f} MB/s: "
        f"{_seconds(s.real_model_disk_seconds)})",
    ]
    if s.by_reason:
        lines.append("lost tokens by reason:")
        for r in s.by_reason:
            behind = (
                f" ({r.messages_behind:,} messages behind in all)"
                if r.messages_behind is not None
                else ""
            )
            lines.append(f"  {r.reason:<22} {r.tokens:>9,} tokens in {r.turns} turns{behind}")
    return "\n".join(lines)


def render_recall(t: dict[str, Any]) -> str:
    decided = ", ".join(f"{n} {d}" for d, n in t["by_decision"].items())
    return (
        f"recall: {t['turns']} turns ({decided}); {t['injected_tokens']:,} tokens injected, "
        f"cost {t['cost_tokens']:,} tokens prefilled ({t['lost_tokens']:,} of them cached "
        "prefix lost)"
    )


def _recall_of(r: TurnRecord) -> str:
    e = r.recall
    if e is None:
        return ""
    what = e.get("decision") or e.get("macro")
    tokens, cost = int(e.get("tokens") or 0), int(e.get("cost_tokens") or 0)
    return f"; recall {what} {tokens:,} tok, cost {cost:,}"
