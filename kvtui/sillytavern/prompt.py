"""An approximate SillyTavern text-completion prompt, rebuilt from a card and a chat file.

Prewarm uses this when the proxy has not yet recorded a real prompt for a character: the closer
it is to what SillyTavern will send, the more of the warmed cache the next real request reuses.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from kvtui.sillytavern.cards import Card
from kvtui.sillytavern.models import Chat, Message

EXAMPLE_SEPARATOR = "***"
CHAT_START = "***"

_CHAR_MACRO = re.compile(r"\{\{char\}\}|<BOT>|<CHAR>", re.IGNORECASE)
_USER_MACRO = re.compile(r"\{\{user\}\}|<USER>", re.IGNORECASE)


def substitute(text: str, char: str, user: str) -> str:
    """Replace the name macros (``{{char}}``, ``{{user}}`` and the legacy ``<BOT>``/``<USER>``)."""
    text = _CHAR_MACRO.sub(lambda _m: char, text)
    return _USER_MACRO.sub(lambda _m: user, text)


def story_string(card: Card, user_name: str, persona: str = "") -> str:
    """SillyTavern's "Default" context template: system prompt, description, personality,
    scenario, persona, one per line, each only when non-empty (macros substituted)."""

    def clean(text: str) -> str:
        return substitute(text.strip(), card.name, user_name)

    parts = [clean(card.system_prompt), clean(card.description)]
    personality = clean(card.personality)
    parts.append(f"{card.name}'s personality: {personality}" if personality else "")
    scenario = clean(card.scenario)
    parts.append(f"Scenario: {scenario}" if scenario else "")
    parts.append(clean(persona))
    return "".join(f"{part}\n" for part in parts if part)


def example_blocks(card: Card, user_name: str, separator: str = EXAMPLE_SEPARATOR) -> list[str]:
    """The card's example dialogues, one block per ``<START>``, each headed by ``separator``."""
    text = card.mes_example
    if not text.strip() or text.strip() == "<START>":
        return []
    if not text.startswith("<START>"):
        text = "<START>\n" + text.strip()
    heading = f"{separator}\n" if separator else ""
    blocks = re.split(r"<START>", text, flags=re.IGNORECASE)[1:]
    return [
        f"{heading}{substitute(block.strip(), card.name, user_name)}\n"
        for block in blocks
        if block.strip()
    ]


def format_message(message: Message, char: str, user: str) -> str:
    """One history line the way SillyTavern formats it without instruct mode."""
    text = substitute(message.mes, char, user)
    if message.is_narrator or not message.name:
        return f"{text}\n"
    return f"{message.name}: {text}\n"


def assemble_prompt(
    card: Card,
    chat: Chat | Sequence[Message],
    user_name: str,
    *,
    speaker: str | None = None,
    persona: str = "",
    include_examples: bool = True,
    max_chars: int | None = None,
    example_separator: str = EXAMPLE_SEPARATOR,
    chat_start: str = CHAT_START,
) -> str:
    """Approximate the prompt SillyTavern sends for ``card``'s next reply in ``chat``.

    This follows SillyTavern's default text-completion layout (non-instruct, "Default" context
    template, ``always_force_name2`` on): the story string from the card (system prompt,
    description, ``<name>'s personality:``, ``Scenario:``, persona), the example dialogues each
    headed by ``***``, the chat start ``***``, one ``Name: message`` line per message that is
    not hidden (``is_system`` false; narrator lines have no name), and finally ``\\nName:`` for
    ``speaker`` (default: the card's name) to speak.

    It is **approximate**: World Info, Author's Note, instruct templates, custom story strings,
    group append mode, regex scripts and token-based trimming are not reproduced. Prewarm uses
    it only when the proxy has not recorded a real prompt for the character.

    ``max_chars`` is a soft budget: the oldest messages are dropped first, then the examples;
    the story string is always kept whole.
    """
    name = speaker or card.name
    messages = chat.messages if isinstance(chat, Chat) else chat
    head = story_string(card, user_name, persona)
    examples = example_blocks(card, user_name, example_separator) if include_examples else []
    start = substitute(chat_start, card.name, user_name) + "\n" if chat_start else ""
    history = [format_message(m, card.name, user_name) for m in messages if not m.is_system]
    tail = f"{name}:"

    def build() -> str:
        return head + "".join(examples) + start + "".join(history) + tail

    if max_chars is not None:
        size = len(build())
        while size > max_chars and history:
            size -= len(history.pop(0))
        while size > max_chars and examples:
            size -= len(examples.pop())
    return build()
