"""Plain data read from a SillyTavern user directory: chat references, groups, members, chats.

Everything here is frozen. Raw JSON objects that callers may want to look into (a message's
``extra``, a chat's ``chat_metadata``) are kept as mappings but take no part in equality.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ChatRef:
    """One chat file, named the way SillyTavern names the chat.

    ``chat_id`` is what SillyTavern calls the chat id: the file stem of a 1:1 chat
    (``Seraphina - 2026-05-03@18h45m46s123ms``) or a group's chat id. ``avatar`` is set for 1:1
    chats (the character's card file name), ``group_id`` for group chats. ``mtime`` (seconds since
    the epoch, when the reference was made) is informational and not part of equality.
    """

    chat_id: str
    path: Path
    group_id: str | None
    avatar: str | None
    display_name: str
    mtime: float = field(default=0.0, compare=False)

    @property
    def is_group(self) -> bool:
        return self.group_id is not None


@dataclass(frozen=True)
class Group:
    """A group from ``groups/<id>.json``. Members are avatar file names; muted = disabled."""

    id: str
    name: str
    members: tuple[str, ...]
    disabled_members: tuple[str, ...]
    chat_id: str | None
    """The group's current chat id (file ``group chats/<chat_id>.jsonl``)."""
    chats: tuple[str, ...]
    """All of the group's chat ids; always includes ``chat_id`` when that is set."""
    path: Path
    generation_mode: int = 0
    """0 swap (only the speaker's card in the prompt), 1 append, 2 append with disabled members."""
    chat_metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Old (pre-Nov-2025) groups keep the metadata of their chats here, by chat id."""

    def is_muted(self, avatar: str) -> bool:
        return avatar in self.disabled_members


@dataclass(frozen=True)
class Member:
    """A character taking part in a chat. A 1:1 chat has exactly one, never muted."""

    name: str
    avatar: str
    muted: bool = False


@dataclass(frozen=True)
class Message:
    """One message line of a chat file. ``mes`` is the text of the active swipe."""

    name: str
    is_user: bool
    is_system: bool
    """True when hidden from the prompt (``/hide``, ST system messages, comments)."""
    mes: str
    swipes: tuple[str, ...] = ()
    swipe_id: int | None = None
    original_avatar: str | None = None
    """In group chats, the speaking member's avatar file name (the stable key)."""
    send_date: datetime | None = None
    """When the message was sent, as an aware datetime, when the stored value was readable."""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_narrator(self) -> bool:
        """A ``/sys`` narrator message: shown in the prompt without a name prefix."""
        return self.extra.get("type") == "narrator"

    @property
    def gen_id(self) -> int | None:
        """The generation batch id group replies share (``extra.gen_id``)."""
        value = self.extra.get("gen_id")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Chat:
    """A parsed chat file: optional header line, then messages in file order."""

    ref: ChatRef
    messages: tuple[Message, ...]
    has_header: bool
    """False for old group chats (before Nov 2025), whose line 0 is already a message."""
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """``chat_metadata`` from the header (or, for old group chats, from the group file)."""
    user_name: str | None = None
    """The header's ``user_name`` in old 1:1 chats; None when absent or ``"unused"``."""
    skipped_lines: int = 0
    """Lines that were not JSON objects and were left out (each logged as a warning)."""

    @property
    def integrity(self) -> str | None:
        value = self.metadata.get("integrity")
        return value if isinstance(value, str) else None

    @property
    def visible_messages(self) -> tuple[Message, ...]:
        """Messages that go into the prompt (not hidden with ``is_system``)."""
        return tuple(m for m in self.messages if not m.is_system)
