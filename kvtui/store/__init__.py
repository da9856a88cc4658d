"""The save directory: file names, the save index with sidecars, verified saves, rotation,
repair, extension-name resolution, grouping, watching."""

from __future__ import annotations

from kvtui.store.entries import UNPARSED_CHAT, SaveEntry, SaveMeta, is_valid_save
from kvtui.store.errors import (
    NotRestorable,
    SaveDirUnreadable,
    SaveIncomplete,
    SaveRefused,
    SaveWriteFailed,
    StoreError,
)
from kvtui.store.extension import (
    KnownChats,
    Match,
    Resolution,
    extension_normalize,
    resolve_extension_names,
)
from kvtui.store.grouping import CharacterSaves, ChatGroup, filter_groups, group_saves
from kvtui.store.names import (
    InvalidSaveName,
    ParsedName,
    check_filename,
    format_save_name,
    is_private_name,
    normalize,
    parse_save_name,
    private_name,
)
from kvtui.store.store import SaveStore

__all__ = [
    "UNPARSED_CHAT",
    "CharacterSaves",
    "ChatGroup",
    "InvalidSaveName",
    "KnownChats",
    "Match",
    "NotRestorable",
    "ParsedName",
    "Resolution",
    "SaveDirUnreadable",
    "SaveEntry",
    "SaveIncomplete",
    "SaveMeta",
    "SaveRefused",
    "SaveStore",
    "SaveWriteFailed",
    "StoreError",
    "check_filename",
    "extension_normalize",
    "filter_groups",
    "format_save_name",
    "group_saves",
    "is_private_name",
    "is_valid_save",
    "normalize",
    "parse_save_name",
    "private_name",
    "resolve_extension_names",
]
