"""Pure formatting for the dashboard: how a slot row, a time or a size reads on screen.

Kept apart from the widgets so it is unit-tested without a running app. Text that came from the
server or from files (character and chat names, tags) is returned as ``rich.text.Text`` so that
no widget ever parses it as markup.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from rich.text import Text

from kvtui.chatref import chat_label
from kvtui.service import SlotRow
from kvtui.warmth import SessionSummary, SlotWarmth

DASH = "—"

SLOT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("slot", "#"),
    ("state", "State"),
    ("character", "Character"),
    ("chat", "Chat"),
    ("tokens", "Tokens"),
    ("usage", "Used"),
    ("autosave", "Autosave"),
    ("last_save", "Saved"),
    ("hit", "Hit"),
)
"""The slot table's columns as (key, label), in display order (short: 80 columns fit)."""


def local_time(when: datetime | None, now: datetime | None = None) -> str:
    """A save time in the local zone: ``HH:MM:SS`` today, ``YYYY-MM-DD HH:MM`` otherwise."""
    if when is None:
        return DASH
    local = when.astimezone()
    today = (now or datetime.now().astimezone()).astimezone().date()
    if local.date() == today:
        return f"{local:%H:%M:%S}"
    return f"{local:%Y-%m-%d %H:%M}"


def local_datetime(when: datetime) -> str:
    """A full local date and time, as the load picker lists saves."""
    return f"{when.astimezone():%Y-%m-%d %H:%M:%S}"


def human_size(n_bytes: int | None) -> str:
    """``3.1 MB``-style sizes (powers of 1024, one decimal above a kilobyte)."""
    if n_bytes is None:
        return DASH
    size = float(n_bytes)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TB"  # pragma: no cover - the loop always returns


def slot_state(row: SlotRow) -> Text:
    """``idle``, or ``busy n/total`` while the server decodes in that slot (short: the table
    fits 80 columns)."""
    if not row.processing:
        return Text("idle", style="dim")
    decoded = row.n_decoded or 0
    if row.n_remain is not None and row.n_remain >= 0:
        return Text(f"busy {decoded}/{decoded + row.n_remain}", style="bold")
    return Text(f"busy {decoded}", style="bold")


def slot_tokens(row: SlotRow) -> str:
    """Tokens in the slot (its context is in the header: every slot has the same)."""
    return DASH if row.tokens is None else f"{row.tokens:,}"


def slot_autosave(row: SlotRow) -> Text:
    """Messages until the character's next autosave (the seed's header indicator).

    "off" is bold italic, not dimmed: it must stand out in every theme.
    """
    if row.character is None:
        return Text(DASH)
    if row.messages_until_save is None:
        return Text("off", style="bold italic")
    n = max(row.messages_until_save, 0)
    return Text(f"{n} msg" if n == 1 else f"{n} msgs")


def plain(value: str | None) -> Text:
    """Untrusted text (a name from a file or the server), never read as markup."""
    return Text(value) if value else Text(DASH, style="dim")


REASON_WORDS = {
    "evicted_unsaved": "evicted",
    "older_save": "old save",
    "server_restart": "restart",
    "chat_switch": "switch",
    "prompt_changed_early": "changed",
    "identity_unsure": "unsure",
    "no_save": "no save",
    "server_choice": "server",
}
"""A loss reason (``kvtui.warmth.Reason``) in the one or two words the table has room for."""


def slot_hit(warmth: SlotWarmth | None) -> Text:
    """The slot's last turn: the share of the prompt that came from the cache, and the reason
    of a loss (``98%``, ``4% restart``)."""
    if warmth is None or warmth.prompt <= 0:
        return Text(DASH)
    share = f"{round(100 * warmth.cached / warmth.prompt)}%"
    if not warmth.reason or not warmth.lost_tokens:
        return Text(share)
    word = REASON_WORDS.get(warmth.reason, warmth.reason)
    if warmth.reason == "older_save" and warmth.behind_messages is not None:
        word += f" ({warmth.behind_messages} msg{'' if warmth.behind_messages == 1 else 's'})"
    return Text.assemble(share, " ", (word, "bold"))


def session_line(summary: SessionSummary | None) -> str:
    """The session in one line: hit ratio, tokens (and time) saved, the top two losses."""
    if summary is None or not summary.turns:
        return "session: no turns yet"
    parts = [f"session: {summary.turns} turns", f"{summary.hit_ratio:.0%} cached"]
    saved = f"{summary.cached_tokens:,} tokens saved"
    if summary.seconds_saved:
        saved += f" (~{summary.seconds_saved:.0f} s)"
    parts.append(saved)
    if summary.by_reason:
        top = sorted(summary.by_reason, key=lambda r: -r.tokens)[:2]
        lost = ", ".join(f"{REASON_WORDS.get(r.reason, r.reason)} {r.tokens:,}" for r in top)
        parts.append(f"lost: {lost}")
    return " · ".join(parts)


def slot_cells(
    row: SlotRow,
    now: datetime | None = None,
    titles: Mapping[str, str] | None = None,
    warmth: Mapping[int, SlotWarmth] | None = None,
) -> dict[str, str | Text]:
    """Every cell of one slot row, keyed by column key.

    ``titles`` maps chat ids to SillyTavern's names for them (a group chat's id is a timestamp);
    ``warmth`` holds each slot's last routed turn (automatic mode).
    """
    last = (warmth or {}).get(row.slot)
    if last is not None and (last.character != row.character):
        last = None  # the slot changed hands since
    return {
        "hit": slot_hit(last),
        "slot": str(row.slot),
        "state": slot_state(row),
        "character": plain(row.character),
        "chat": plain(chat_label(row.chat, titles or {}) if row.chat else None),
        "tokens": slot_tokens(row),
        "usage": str(row.usage) if row.character else DASH,
        "autosave": slot_autosave(row),
        "last_save": local_time(row.last_save_at, now),
    }
