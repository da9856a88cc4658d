"""Where things live in a SillyTavern user directory, and which file names are chat files.

Shared by the reader (``data``), the watcher (``watch``) and the chat index (``chatindex``), so
none of them needs to import another for a folder name.
"""

from __future__ import annotations

CHARACTERS_DIR = "characters"
CHATS_DIR = "chats"
GROUP_CHATS_DIR = "group chats"
GROUPS_DIR = "groups"
SETTINGS_FILE = "settings.json"


def is_chat_file_name(name: str) -> bool:
    """A chat file's name: ``*.jsonl``, not hidden (atomic-write temp files end otherwise)."""
    return name.endswith(".jsonl") and not name.startswith(".")


def plain_name(name: str) -> bool:
    """A single path component (no separators, not ``.``/``..``): safe to join to a folder."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name
