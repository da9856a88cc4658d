"""Parsing SillyTavern chat files (JSONL: an optional header line, then one message per line).

Line 0 is a header when it has ``chat_metadata``, or ``user_name``/``character_name`` without
``mes`` (SillyTavern's own test). Old group chats (before Nov 2025) have no header: line 0 is
already a message. Files are joined with ``\\n`` and have no trailing newline; both are accepted.
``send_date`` comes in three shapes across versions (ISO-8601, ``"September 28, 2024 1:02am"``,
epoch milliseconds); all are read, as is the humanized ``2026-05-03@18h45m46s123ms`` form.
Malformed lines are skipped with a warning, never raised.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvtui.sillytavern.models import Chat, ChatRef, Message

log = logging.getLogger(__name__)

_OLD_DATE_FORMATS = ("%B %d, %Y %I:%M%p", "%b %d, %Y %I:%M%p", "%B %d, %Y %H:%M")
_HUMANIZED = re.compile(
    r"^(\d{4})-(\d{1,2})-(\d{1,2})@(\d{1,2})h(\d{1,2})m(\d{1,2})s(?:(\d{1,3})ms)?$"
)


def _from_epoch(value: float) -> datetime | None:
    seconds = value / 1000 if abs(value) >= 1e11 else value  # ms vs s
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _local_to_utc(naive: datetime) -> datetime:
    """A naive time written by the browser in its local zone, as aware UTC."""
    return naive.astimezone(UTC)


def parse_send_date(value: Any) -> datetime | None:
    """A message's ``send_date`` as an aware UTC datetime, or None when unreadable.

    Naive values (old formats, humanized dates) were written in the browser's local time; they
    are read as this machine's local time.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return _from_epoch(float(value))
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return _from_epoch(float(text))
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        pass
    else:
        return parsed.astimezone(UTC) if parsed.tzinfo else _local_to_utc(parsed)
    match = _HUMANIZED.match(text)
    if match:
        y, mo, d, h, mi, s, ms = match.groups()
        try:
            naive = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), int(ms or 0) * 1000)
        except ValueError:
            return None
        return _local_to_utc(naive)
    spaced = re.sub(r"\s+", " ", text)
    for fmt in _OLD_DATE_FORMATS:
        try:
            return _local_to_utc(datetime.strptime(spaced, fmt))  # names match any case
        except ValueError:
            continue
    return None


def is_header(obj: Mapping[str, Any]) -> bool:
    """Whether line 0 of a chat file is a header rather than a message."""
    if "chat_metadata" in obj:
        return True
    return ("user_name" in obj or "character_name" in obj) and "mes" not in obj


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if value is None else str(value)


def parse_message(obj: Mapping[str, Any]) -> Message:
    """A ``Message`` from one message line, tolerant of missing or mistyped fields."""
    swipes_raw = obj.get("swipes")
    swipes = tuple(_text(s) for s in swipes_raw) if isinstance(swipes_raw, list) else ()
    swipe_id = obj.get("swipe_id")
    avatar = obj.get("original_avatar")
    extra = obj.get("extra")
    return Message(
        name=_text(obj.get("name")),
        is_user=bool(obj.get("is_user")),
        is_system=bool(obj.get("is_system")),
        mes=_text(obj.get("mes")),
        swipes=swipes,
        swipe_id=swipe_id if isinstance(swipe_id, int) and not isinstance(swipe_id, bool) else None,
        original_avatar=avatar if isinstance(avatar, str) and avatar else None,
        send_date=parse_send_date(obj.get("send_date")),
        extra=extra if isinstance(extra, dict) else {},
    )


def parse_chat_text(
    text: str,
    ref: ChatRef,
    *,
    fallback_metadata: Mapping[str, Any] | None = None,
) -> Chat:
    """Parse a chat file's text. ``fallback_metadata`` is used when there is no header."""
    messages: list[Message] = []
    header: Mapping[str, Any] | None = None
    skipped = 0
    first = True
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            obj, reason = None, f"not JSON ({err.msg})"
        else:
            reason = "not a JSON object"
        if not isinstance(obj, dict):
            skipped += 1
            log.warning("%s: line %d skipped: %s", ref.path, number, reason)
            first = False
            continue
        if first and is_header(obj):
            header = obj
        else:
            messages.append(parse_message(obj))
        first = False
    metadata: Mapping[str, Any] = {}
    user_name: str | None = None
    if header is not None:
        meta = header.get("chat_metadata")
        metadata = meta if isinstance(meta, dict) else {}
        name = header.get("user_name")
        if isinstance(name, str) and name and name != "unused":
            user_name = name
    elif fallback_metadata is not None:
        metadata = fallback_metadata
    return Chat(
        ref=ref,
        messages=tuple(messages),
        has_header=header is not None,
        metadata=metadata,
        user_name=user_name,
        skipped_lines=skipped,
    )


def read_chat_file(
    path: Path, ref: ChatRef, *, fallback_metadata: Mapping[str, Any] | None = None
) -> Chat:
    """Read and parse the chat file at ``path``. Raises ``OSError`` when it cannot be read."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    return parse_chat_text(text, ref, fallback_metadata=fallback_metadata)
