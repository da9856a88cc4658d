"""SillyTavern's own idea of what is open: the selected character or group, current chats.

Read from ``settings.json`` (``active_character``/``active_group``, saved debounced about a second
after a click; ``active_group`` stays null for a group without a ``tag_map`` entry), each card's
``chat`` (rewritten at once when a chat is opened from the chat list) and each group's
``chat_id`` (rewritten when a group chat is opened from its list).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from kvtui.sillytavern.models import Group
from kvtui.sillytavern.templates import ControlPrompts


@dataclass(frozen=True)
class SillyTavernState:
    """What SillyTavern's own files say is open (each may lag or be stale; see module doc)."""

    active_character: str | None = None
    """``settings.json`` ``active_character``: the avatar file of the selected character."""
    active_group: str | None = None
    card_chats: Mapping[str, str] = field(default_factory=dict)
    """Each character's current chat (card ``chat``), by avatar file."""
    names: Mapping[str, str] = field(default_factory=dict)
    """Each character's display name, by avatar file."""
    groups: Mapping[str, Group] = field(default_factory=dict)
    user_name: str = "User"
    prompts: ControlPrompts = field(default_factory=ControlPrompts)

    def avatars_named(self, name: str) -> list[str]:
        """Avatar files of the characters called ``name`` (names can collide)."""
        return sorted(a for a, n in self.names.items() if n == name)

    def groups_with(self, avatars: Collection[str]) -> list[Group]:
        return [g for g in self.groups.values() if any(a in g.members for a in avatars)]

    def current_chats(self, avatars: Collection[str] | None = None) -> dict[str, str | None]:
        """Current chat id → group id (None for 1:1) of the given characters and their groups
        (every character's and group's when ``avatars`` is None)."""
        pool = self.names.keys() if avatars is None else avatars
        current: dict[str, str | None] = {
            self.card_chats[a]: None for a in pool if a in self.card_chats
        }
        groups = self.groups.values() if avatars is None else self.groups_with(avatars)
        for group in groups:
            if group.chat_id:
                current[group.chat_id] = group.id
        return current


def user_name_of(settings: Mapping[str, Any]) -> str:
    power = settings.get("power_user")
    avatar = settings.get("user_avatar")
    if isinstance(power, Mapping) and isinstance(power.get("personas"), Mapping):
        persona = power["personas"].get(avatar)
        if isinstance(persona, str) and persona:
            return persona
    name = settings.get("username")
    return name if isinstance(name, str) and name else "User"
