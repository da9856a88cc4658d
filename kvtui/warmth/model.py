"""The per-turn warmth accounting's data: what the router knows, what a turn cost, and summaries.

Plain frozen data shared by the ledger, the turns log, ``kvtui stats`` and (later) the dashboard.
A :class:`TurnRecord` is one line of ``<state_dir>/turns.jsonl`` (the contract in
``notes/contracts.md``); :class:`SlotWarmth` and :class:`SessionSummary` are ready for a table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Reason(StrEnum):
    """Why a turn re-prefilled tokens its character's cache could have held."""

    EVICTED_UNSAVED = "evicted_unsaved"
    OLDER_SAVE = "older_save"
    SERVER_RESTART = "server_restart"
    CHAT_SWITCH = "chat_switch"
    PROMPT_CHANGED_EARLY = "prompt_changed_early"
    IDENTITY_UNSURE = "identity_unsure"
    NO_SAVE = "no_save"
    SERVER_CHOICE = "server_choice"


UNATTRIBUTED = "unattributed"
"""Key for lost tokens whose routing facts were not known (``TurnDecision.facts_known=False``)."""

UNSURE_SOURCES = frozenset({"fingerprint", "unsure"})


@dataclass(frozen=True)
class TurnDecision:
    """What the router knows when it routes a generation (see :meth:`WarmthLedger.begin`).

    ``prompt`` / ``previous_prompt`` are texts (Chat Completion bodies: their canonical text);
    ``None`` for token-id prompts. ``known_extent`` is the tokens kvtui believes the character's
    cache held before this turn (the slot book's count, or a restore's ``n_restored``); it is
    recorded beside the server's figures (the split itself uses the server's own counts).
    ``facts_known=False`` says the routing facts are unknown: a loss is then ``unattributed``.
    """

    chat: str
    character: str
    source: str
    gen_type: str
    slot: int | None
    prompt: str | None
    chat_title: str | None = None
    previous_prompt: str | None = None
    known_extent: int | None = None
    resident: bool = True
    restored: str | None = None
    restored_tokens: int | None = None
    disk_read_bytes: int = 0
    disk_write_bytes: int = 0
    disk_write_tokens: int = 0
    evicted_unsaved: bool = False
    server_restarted: bool = False
    chat_switched: bool = False
    ram_cache_relied: bool = False
    facts_known: bool = True


@dataclass(frozen=True)
class TurnRecord:
    """One routed generation's accounting: one line of ``turns.jsonl``.

    Always ``new_tokens + lost_tokens == prompt_n``; ``losses`` splits ``lost_tokens`` by reason
    (its values sum to ``lost_tokens``); ``reason`` is the largest of them, or ``None``.
    """

    ts: str
    chat: str
    chat_title: str | None
    character: str
    source: str
    gen_type: str
    slot: int | None
    restored: str | None
    prompt_n: int
    cache_n: int
    new_tokens: int
    lost_tokens: int
    reason: str | None
    first_diff: int | None
    disk_read_bytes: int
    disk_write_bytes: int
    first_diff_tokens: int | None = None
    losses: dict[str, int] = field(default_factory=dict)
    prompt_ms: float | None = None
    predicted_n: int | None = None
    restored_tokens: int | None = None
    disk_write_tokens: int = 0
    estimated: bool = False
    known_extent: int | None = None
    behind_messages: int | None = None
    """For a loss to an older save: how many messages of the chat the save lacked."""
    recall: dict[str, Any] | None = None  # recall's injection and its cost (kvtui.recall)

    @property
    def total(self) -> int:
        return self.prompt_n + self.cache_n

    @property
    def when(self) -> datetime:
        try:
            return datetime.fromisoformat(self.ts)
        except ValueError:
            return datetime.fromtimestamp(0, UTC)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TurnRecord | None:
        """A record from a log line, or ``None`` when the line is not one (bad input is skipped)."""
        try:
            losses_raw = data.get("losses") or {}
            losses = {str(k): int(v) for k, v in dict(losses_raw).items()}
            return cls(
                ts=str(data["ts"]),
                chat=str(data["chat"]),
                chat_title=_opt_str(data.get("chat_title")),
                character=str(data["character"]),
                source=str(data.get("source") or ""),
                gen_type=str(data.get("gen_type") or ""),
                slot=_opt_int(data.get("slot")),
                restored=_opt_str(data.get("restored")),
                prompt_n=int(data["prompt_n"]),
                cache_n=int(data["cache_n"]),
                new_tokens=int(data["new_tokens"]),
                lost_tokens=int(data["lost_tokens"]),
                reason=_opt_str(data.get("reason")),
                first_diff=_opt_int(data.get("first_diff")),
                disk_read_bytes=int(data.get("disk_read_bytes") or 0),
                disk_write_bytes=int(data.get("disk_write_bytes") or 0),
                first_diff_tokens=_opt_int(data.get("first_diff_tokens")),
                losses=losses,
                prompt_ms=_opt_float(data.get("prompt_ms")),
                predicted_n=_opt_int(data.get("predicted_n")),
                restored_tokens=_opt_int(data.get("restored_tokens")),
                disk_write_tokens=int(data.get("disk_write_tokens") or 0),
                estimated=bool(data.get("estimated", False)),
                known_extent=_opt_int(data.get("known_extent")),
                behind_messages=_opt_int(data.get("behind_messages")),
                recall=dict(data["recall"]) if isinstance(data.get("recall"), Mapping) else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


@dataclass(frozen=True)
class SlotWarmth:
    """A slot's last turn, for the dashboard: ``cached/prompt`` and the reason of a miss."""

    slot: int
    chat: str
    character: str
    cached: int
    prompt: int
    lost_tokens: int
    reason: str | None
    at: str
    behind_messages: int | None = None

    @property
    def label(self) -> str:
        """E.g. ``1,820/1,844 cached`` or ``12/1,844 cached · server_restart``."""
        text = f"{self.cached:,}/{self.prompt:,} cached"
        return f"{text} · {reason_text(self.reason, self.behind_messages)}" if self.reason else text


def reason_text(reason: str, behind_messages: int | None = None) -> str:
    """A reason as ``kvtui stats`` prints it: ``older_save (3 messages behind)``."""
    if reason == Reason.OLDER_SAVE.value and behind_messages is not None:
        plural = "" if behind_messages == 1 else "s"
        return f"{reason} ({behind_messages} message{plural} behind)"
    return reason


@dataclass(frozen=True)
class ReasonTotal:
    """One reason's losses over a session; for ``older_save`` also the messages the restored
    saves lacked, summed over its turns (``None`` when no turn could tell)."""

    reason: str
    tokens: int
    turns: int
    seconds: float | None
    messages_behind: int | None = None


@dataclass(frozen=True)
class SessionSummary:
    """Totals over a run of turns (the proxy's session, or a window of the log).

    ``prefilled_tokens`` is the server's own ``prompt_n`` total; it always equals
    ``new_tokens + lost_tokens``, and ``lost_tokens`` equals the sum of ``by_reason``.
    Seconds are estimated with the server's measured prefill speed (``None`` when unknown).
    """

    turns: int
    prefilled_tokens: int
    cached_tokens: int
    new_tokens: int
    lost_tokens: int
    by_reason: tuple[ReasonTotal, ...]
    prefill_tokens_per_second: float | None
    seconds_saved: float | None
    seconds_lost: float | None
    disk_read_bytes: int
    disk_write_bytes: int
    disk_read_tokens: int
    disk_write_tokens: int
    real_model_disk_seconds: float | None
    real_model_bytes_per_token: int
    disk_mb_per_second: float
    first_at: str | None
    last_at: str | None

    @property
    def hit_ratio(self) -> float:
        total = self.prefilled_tokens + self.cached_tokens
        return self.cached_tokens / total if total else 0.0

    @property
    def invariant_holds(self) -> bool:
        """Lost tokens by reason == the server's ``prompt_n`` total minus genuinely new tokens."""
        by_reason = sum(r.tokens for r in self.by_reason)
        return by_reason == self.lost_tokens == self.prefilled_tokens - self.new_tokens

    @property
    def disk_read_mb(self) -> float:
        return self.disk_read_bytes / 1e6

    @property
    def disk_write_mb(self) -> float:
        return self.disk_write_bytes / 1e6

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["by_reason"] = [asdict(r) for r in self.by_reason]
        data["hit_ratio"] = self.hit_ratio
        data["invariant_holds"] = self.invariant_holds
        data["disk_read_mb"] = self.disk_read_mb
        data["disk_write_mb"] = self.disk_write_mb
        return data


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    return int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
