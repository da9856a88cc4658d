"""What recall did to one request: the decision, the telemetry, the body to forward."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Decision(StrEnum):
    COMPUTED = "computed"  # a new round
    RECOMPUTED = "recomputed"  # the cached round redone (edit, delete, reported change)
    REUSED = "reused"
    TRANSIENT = "transient"  # computed for this request only (quiet/impersonate, no cache)


@dataclass(frozen=True)
class RecallTelemetry:
    """What recall did to one request (JSON-ready for the per-turn log)."""

    macro: str  # "found" | "none" | "malformed" | "disabled" | "token_ids"
    decision: Decision | None = None
    reason: str = ""
    memory_ids: tuple[str, ...] = ()
    chars: int = 0  # characters of recall injected
    position: int | None = None  # characters before the injection in the request text
    chars_after: int | None = None  # request characters after it (what a change re-prefills)
    changed: bool | None = None  # differs from the last recall injected for this character
    longterm_batch: int | None = None
    longterm_chars: int = 0
    longterm_position: int | None = None
    longterm_changed: bool | None = None
    key_source: str | None = None
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["decision"] = self.decision.value if self.decision else None
        data["memory_ids"] = list(self.memory_ids)
        data["warnings"] = list(self.warnings)
        return data


@dataclass(frozen=True)
class RecallOutcome:
    body: dict[str, Any]  # what to forward (the caller's body itself when nothing changed)
    telemetry: RecallTelemetry
    values: Mapping[str, str] = field(default_factory=dict)  # each macro's replacement text
    text: str = ""  # this turn's recall as injected
    settled: dict[str, Any] | None = None
    """The request as sent without this turn's recall (kept pins stay): what the next turn's
    prompt begins with. ``None`` when nothing was injected or the recall stays as a pin."""
    fallback: RecallOutcome | None = None
    """This turn without earlier turns' kept recall, when the body puts some back: sent instead
    when the prompt with it would not fit the slot's context."""
