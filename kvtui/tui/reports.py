"""What a finished action says: one toast per job, one line per character.

Pure functions over the service's outcome objects, so the wording is tested without a screen.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from kvtui.service import LoadOutcome, SaveOutcome, ServiceError

Severity = Literal["information", "warning", "error"]


@dataclass(frozen=True)
class Report:
    title: str
    message: str
    severity: Severity = "information"


def _severity(ok: int, failed: int) -> Severity:
    if failed == 0:
        return "information"
    return "warning" if ok else "error"


def save_line(outcome: SaveOutcome) -> str:
    line = f"{outcome.character} (slot {outcome.slot}): {outcome.n_saved} tokens"
    if outcome.rotated:
        line += f", rotated {len(outcome.rotated)} old autosave(s)"
    return line


def save_report(results: Sequence[SaveOutcome | ServiceError], tag: str | None) -> Report:
    """The report of "save now", "save with tag" and "save slot"."""
    ok = [r for r in results if isinstance(r, SaveOutcome)]
    failed = [r for r in results if isinstance(r, ServiceError)]
    if not results:
        return Report("Nothing to save", "No slot has a character. Assign one with c.", "warning")
    title = f"Saved with tag {tag}" if tag else "Saved"
    lines = [save_line(r) for r in ok] + [f"failed: {err}" for err in failed]
    return Report(
        f"{title} ({len(ok)} of {len(results)})", "\n".join(lines), _severity(len(ok), len(failed))
    )


def load_line(outcome: LoadOutcome, current_chat: str | None) -> str:
    if outcome.error is not None:
        return f"{outcome.character}: failed: {outcome.error}"
    line = f"{outcome.character} → slot {outcome.slot}: {outcome.n_restored} tokens"
    if outcome.from_other_chat or (current_chat is not None and outcome.chat != current_chat):
        line += f", loaded from chat {outcome.chat}"
    elif current_chat is None:
        line += f", chat {outcome.chat}"
    if outcome.evicted:
        line += f" (evicted {outcome.evicted})"
    return line


def load_report(outcomes: Sequence[LoadOutcome], current_chat: str | None) -> Report:
    """The report of a load from the picker: each character, its slot and its chat."""
    failed = sum(1 for o in outcomes if o.error is not None)
    ok = len(outcomes) - failed
    lines = [load_line(o, current_chat) for o in outcomes]
    return Report(f"Loaded {ok} of {len(outcomes)}", "\n".join(lines), _severity(ok, failed))
