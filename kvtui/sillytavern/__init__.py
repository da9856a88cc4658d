"""Read-only access to a SillyTavern user data directory, plus kvtui's sample directory.

``SillyTavernData`` lists characters (PNG cards), groups, chats (1:1 and group JSONL files) and
finds the newest chat file; ``ChatIndex`` and ``decide_chat`` tell which chat a prompt is for;
``assemble_prompt`` approximates SillyTavern's text-completion prompt; ``copy_sample`` provides
the demo's data directory. Nothing here writes to a user's files.
"""

from __future__ import annotations

from kvtui.sillytavern.cards import (
    Card,
    CardError,
    build_card_json,
    card_from_json,
    read_card,
    read_card_json,
    write_card_png,
)
from kvtui.sillytavern.chatfile import is_header, parse_chat_text, parse_send_date
from kvtui.sillytavern.chatindex import ChatIndex, ChatMatch, IndexedChat
from kvtui.sillytavern.data import SillyTavernData, SillyTavernError
from kvtui.sillytavern.evidence import ChatDecision, ChatSource, decide_chat
from kvtui.sillytavern.models import Chat, ChatRef, Group, Member, Message
from kvtui.sillytavern.prompt import assemble_prompt
from kvtui.sillytavern.sample import build_sample, copy_sample
from kvtui.sillytavern.ststate import SillyTavernState
from kvtui.sillytavern.templates import ControlPrompts

__all__ = [
    "Card",
    "CardError",
    "Chat",
    "ChatDecision",
    "ChatIndex",
    "ChatMatch",
    "ChatRef",
    "ChatSource",
    "ControlPrompts",
    "Group",
    "IndexedChat",
    "Member",
    "Message",
    "SillyTavernData",
    "SillyTavernError",
    "SillyTavernState",
    "assemble_prompt",
    "build_card_json",
    "build_sample",
    "card_from_json",
    "copy_sample",
    "decide_chat",
    "is_header",
    "parse_chat_text",
    "parse_send_date",
    "read_card",
    "read_card_json",
    "write_card_png",
]
