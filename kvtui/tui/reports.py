"""What a finished action says: one toast per job, one line per character.

Pure functions over the service's outcome objects, so the wording is tested without a screen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kvtui.service import BatchResult, LoadOutcome, SaveOutcome

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


def save_report(results: BatchResult[SaveOutcome], tag: str | None) -> Report:
    """The report of "save now", "save with tag" and "save slot"."""
    ok, failed = results.done, results.failed
    if not results.total:
        return Report("Nothing to save", "No slot has a character. Assign one with c.", "warning")
    title = f"Saved with tag {tag}" if tag else "Saved"
    lines = [save_line(r) for r in ok] + [f"failed: {f.item}: {f.error}" for f in failed]
    return Report(
        f"{title} ({len(ok)} of {results.total})", "\n".join(lines), _severity(len(ok), len(failed))
    )


def load_line(outcome: LoadOutcome, current_chat: str | None) -> str:
    line = f"{outcome.character} → slot {outcome.slot}: {outcome.n_restored} tokens"
    if outcome.from_other_chat or (current_chat is not None and outcome.chat != current_chat):
        line += f", loaded from chat {outcome.chat}"
    elif current_chat is None:
        line += f", chat {outcome.chat}"
    if outcome.evicted:
        line += f" (evicted {outcome.evicted})"
    return line


def load_report(outcomes: BatchResult[LoadOutcome], current_chat: str | None) -> Report:
    """The report of a load from the picker: each character, its slot and its chat."""
    ok, failed = len(outcomes.done), len(outcomes.failed)
    lines = [load_line(o, current_chat) for o in outcomes.done]
    lines += [f"{f.item}: failed: {f.error}" for f in outcomes.failed]
    return Report(f"Loaded {ok} of {outcomes.total}", "\n".join(lines), _severity(ok, failed))
