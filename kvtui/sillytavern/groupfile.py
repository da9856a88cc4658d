"""Parsing SillyTavern group files (``groups/<id>.json``).

A group lists its members and muted (``disabled_members``) members by avatar file name, its
current chat id and all its chat ids. Groups from before Nov 2025 also carry their chats'
metadata, which old header-less group chat files lack.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kvtui.sillytavern.models import Group

log = logging.getLogger(__name__)


def _str_tuple(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        return ()
    return tuple(v for v in value if isinstance(v, str) and v)


def parse_group(obj: Mapping[str, Any], path: Path) -> Group:
    """A ``Group`` from a group file's JSON (``path`` supplies the id when the JSON lacks one)."""
    group_id = obj.get("id")
    gid = str(group_id) if isinstance(group_id, str | int) and group_id != "" else path.stem
    chat_id_raw = obj.get("chat_id")
    chat_id = str(chat_id_raw) if isinstance(chat_id_raw, str | int) and chat_id_raw != "" else None
    chats = tuple(str(c) for c in obj.get("chats") or [] if isinstance(c, str | int))
    if chat_id is not None and chat_id not in chats:
        chats += (chat_id,)
    # Before Nov 2025 a group kept its chats' metadata: current in chat_metadata, others in
    # past_metadata by chat id.
    metadata: dict[str, Any] = {}
    past = obj.get("past_metadata")
    if isinstance(past, dict):
        metadata.update({str(k): v for k, v in past.items() if isinstance(v, dict)})
    current = obj.get("chat_metadata")
    if chat_id is not None and isinstance(current, dict):
        metadata[chat_id] = current
    mode = obj.get("generation_mode")
    name = obj.get("name")
    return Group(
        id=gid,
        name=name if isinstance(name, str) and name else gid,
        members=_str_tuple(obj.get("members")),
        disabled_members=_str_tuple(obj.get("disabled_members")),
        chat_id=chat_id,
        chats=chats,
        path=path,
        generation_mode=mode if isinstance(mode, int) and not isinstance(mode, bool) else 0,
        chat_metadata=metadata,
    )


def read_group(path: Path) -> Group | None:
    try:
        obj = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        log.warning("Skipping group file %s: %s", path, err)
        return None
    if not isinstance(obj, dict):
        log.warning("Skipping group file %s: not a JSON object", path)
        return None
    return parse_group(obj, path)
