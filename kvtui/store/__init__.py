"""The save directory: file names, the save index with sidecars, rotation, grouping, watching."""

from __future__ import annotations

from kvtui.store.grouping import CharacterSaves, ChatGroup, filter_groups, group_saves
from kvtui.store.names import (
    InvalidSaveName,
    ParsedName,
    check_filename,
    format_save_name,
    normalize,
    parse_save_name,
)
from kvtui.store.store import UNPARSED_CHAT, SaveEntry, SaveMeta, SaveStore, is_valid_save

__all__ = [
    "UNPARSED_CHAT",
    "CharacterSaves",
    "ChatGroup",
    "InvalidSaveName",
    "ParsedName",
    "SaveEntry",
    "SaveMeta",
    "SaveStore",
    "check_filename",
    "filter_groups",
    "format_save_name",
    "group_saves",
    "is_valid_save",
    "normalize",
    "parse_save_name",
]
