"""Who a generation request is for: (chat, character) inferred from the request (pure functions).

SillyTavern sends no chat or character field to llama.cpp, so kvtui tries, in order:

1. **Explicit**: a ``kvtui`` object in the JSON body (``chat``/``chat_id``, ``character``/``name``,
   ``avatar``, optional ``type``: the companion extension's sketch) or the ``X-KVTUI-Chat`` /
   ``X-KVTUI-Character`` headers (percent-decoded, so non-ASCII names survive). The ``kvtui`` key
   is removed from the body that is forwarded.
2. **SillyTavern inference** on a text prompt: the reply-request tail ``\\nName:`` (also after an
   instruct output sequence such as ``<|im_start|>assistant\\n`` or ``[/INST]``); with the active
   chat's members known, a tail naming a member wins, then the one member missing from ``stop``
   (SillyTavern stops on every other member), then the chat's only character, then the last
   member who spoke. Without members: the tail, or on impersonation (the tail is a known user
   name) the one other name in ``stop``; then the last plausible speaker line.
   For chat-completions bodies: the same member rules, then the last assistant message's name.
3. **Fingerprint**: ``unnamed-xxxxxxxx``, a SHA-1 of the prompt's first
   :data:`FINGERPRINT_CHARS` characters (the story string: stable per character and persona).

The chat is the explicit one, else ``current_chat`` (the active SillyTavern chat, supplied by the
caller), else :data:`UNKNOWN_CHAT`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import unquote

from kvtui.proxy.gentype import (
    TailRole,
    request_prompt,
    request_stop,
    split_tail,
    stop_names,
)
from kvtui.slots import GenType

UNKNOWN_CHAT = "unknown"
FINGERPRINT_CHARS = 512
BODY_KEY = "kvtui"
CHAT_HEADER = "x-kvtui-chat"
CHARACTER_HEADER = "x-kvtui-character"

_SPEAKER = re.compile(r"(?:^|\n)[ \t]*([^\n:\[\]<>|｜#*{}\"]{1,64}):", re.MULTILINE)
_NAME_PREFIX = re.compile(r"([^\n:\[\]<>|｜#*{}\"]{1,64}):\s")
_LABELS = frozenset(
    {"scenario", "personality", "description", "persona", "example", "examples", "note", "notes"}
    | {"summary", "setting", "system", "user", "assistant", "human", "start", "instruction"}
)


class IdentitySource(StrEnum):
    EXPLICIT = "explicit"
    PROMPT_TAIL = "prompt tail"
    STOP_STRINGS = "stop strings"
    CHAT_MEMBER = "chat member"
    LAST_SPEAKER = "last speaker"
    MESSAGES = "messages"
    FINGERPRINT = "fingerprint"


@dataclass(frozen=True)
class Identity:
    chat: str
    character: str
    source: IdentitySource
    avatar: str | None = None
    declared_type: GenType | None = None  # a ``type`` the client stated in its kvtui object


def fingerprint(prompt: str | Sequence[int]) -> str:
    """``unnamed-xxxxxxxx`` for a prompt's beginning (text, or token ids)."""
    if isinstance(prompt, str):
        head = prompt[:FINGERPRINT_CHARS]
    else:
        head = ",".join(str(t) for t in prompt[:FINGERPRINT_CHARS])
    return "unnamed-" + hashlib.sha1(head.encode("utf-8")).hexdigest()[:8]


def _text(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _explicit(
    body: Mapping[str, Any], headers: Mapping[str, str] | None
) -> tuple[str | None, str | None, str | None, GenType | None]:
    chat = character = avatar = None
    declared: GenType | None = None
    obj = body.get(BODY_KEY)
    if isinstance(obj, Mapping):
        chat = _text(obj.get("chat")) or _text(obj.get("chat_id"))
        character = _text(obj.get("character")) or _text(obj.get("name"))
        avatar = _text(obj.get("avatar"))
        kind = _text(obj.get("type")) or _text(obj.get("gen_type"))
        if kind in {t.value for t in GenType}:
            declared = GenType(kind)
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    chat = chat or _text(unquote(lowered.get(CHAT_HEADER, "")))
    character = character or _text(unquote(lowered.get(CHARACTER_HEADER, "")))
    if character is None and avatar is not None:
        character = avatar.rsplit("/", 1)[-1].removesuffix(".png") or None
    return chat, character, avatar, declared


def last_speaker(
    text: str, candidates: Collection[str] = (), exclude: Collection[str] = ()
) -> str | None:
    """The last ``Name:`` speaker line in ``text`` naming a plausible character.

    With ``candidates`` only those names count; otherwise the name must also appear earlier in
    the text (a card or greeting names its character), which rules out instruction lines such as
    ``Respond in JSON:`` at the end of a quiet prompt.
    """
    for m in reversed(list(_SPEAKER.finditer(text))):
        name = m.group(1).strip()
        if not name or name in exclude:
            continue
        if candidates:
            if name in candidates:
                return name
            continue
        if _is_label(name):
            continue
        if text.find(name, 0, m.start()) >= 0:
            return name
    return None


def _is_label(name: str) -> bool:
    lowered = name.casefold()
    return lowered in _LABELS or "'s " in lowered or not any(c.isalpha() for c in name)


def _from_prompt(
    prompt: str, stop: Sequence[str], members: Sequence[str], users: Collection[str]
) -> tuple[str, IdentitySource] | None:
    tail = split_tail(prompt, [*members, *users])
    history = prompt[: len(prompt) - len(tail.text)]
    impersonating = tail.role is TailRole.USER or (tail.name is not None and tail.name in users)
    if members:
        if tail.name is not None and tail.name in members and not impersonating:
            return tail.name, IdentitySource.PROMPT_TAIL
        missing = [m for m in members if f"\n{m}:" not in stop]
        if len(members) > 1 and len(missing) == 1:
            return missing[0], IdentitySource.STOP_STRINGS
        if len(members) == 1:
            return members[0], IdentitySource.CHAT_MEMBER
        if speaker := last_speaker(history, candidates=members):
            return speaker, IdentitySource.LAST_SPEAKER
    in_stop = stop_names(stop)
    if tail.name is not None and not impersonating:
        return tail.name, IdentitySource.PROMPT_TAIL
    if impersonating:
        others = [n for n in in_stop if n not in users and n != tail.name]
        if len(others) == 1:
            return others[0], IdentitySource.STOP_STRINGS
    exclude = {*in_stop, *users} if not impersonating else {*users, tail.name or ""}
    if speaker := last_speaker(history, exclude=exclude):
        return speaker, IdentitySource.LAST_SPEAKER
    return None


def _from_messages(
    messages: Sequence[object], stop: Sequence[str], members: Sequence[str]
) -> tuple[str, IdentitySource] | None:
    if members:
        missing = [m for m in members if f"\n{m}:" not in stop]
        if len(members) > 1 and len(missing) == 1:
            return missing[0], IdentitySource.STOP_STRINGS
        if len(members) == 1:
            return members[0], IdentitySource.CHAT_MEMBER
    texts = [m.get("content") for m in messages if isinstance(m, Mapping)]
    everything = "\n".join(t for t in texts if isinstance(t, str))
    for message in reversed(messages):
        if not isinstance(message, Mapping) or message.get("role") != "assistant":
            continue
        name = _text(message.get("name"))
        content = message.get("content")
        if name is None and isinstance(content, str) and (m := _NAME_PREFIX.match(content)):
            name = m.group(1).strip()
            # Without members a prefix only counts when the name is mentioned elsewhere too
            # (a card or system prompt names its character); "Note:" is not a speaker.
            if not members and (_is_label(name) or everything.count(name) < 2):
                name = None
        if name and (not members or name in members):
            return name, IdentitySource.MESSAGES
    return None


def infer_identity(
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    *,
    members: Sequence[str] = (),
    current_chat: str | None = None,
    user_names: Collection[str] = (),
) -> tuple[Identity, dict[str, Any]]:
    """The request's identity and the body to forward (without the ``kvtui`` key).

    ``members`` are the active chat's character names (one for a 1:1 chat), ``current_chat`` its
    id, ``user_names`` the user's persona names (they are never taken for a character).
    """
    forwarded = {k: v for k, v in body.items() if k != BODY_KEY}
    chat, character, avatar, declared = _explicit(body, headers)
    chat = chat or current_chat or UNKNOWN_CHAT
    if character is not None:
        return Identity(chat, character, IdentitySource.EXPLICIT, avatar, declared), forwarded
    stop = request_stop(body)
    messages = body.get("messages")
    prompt = body.get("prompt")
    found: tuple[str, IdentitySource] | None = None
    text = request_prompt({"prompt": prompt})
    if text is not None:
        found = _from_prompt(text, stop, members, set(user_names))
        key: str | Sequence[int] = text
    elif isinstance(messages, list) and messages:
        found = _from_messages(messages, stop, members)
        key = "\n".join(
            f"{m.get('role')}: {m.get('content')}" for m in messages if isinstance(m, Mapping)
        )
    else:  # token ids (or no prompt): nothing to read but the active chat
        key = [t for t in prompt if isinstance(t, int)] if isinstance(prompt, list) else ""
        if len(members) == 1:
            found = members[0], IdentitySource.CHAT_MEMBER
    if found is None:
        found = fingerprint(key), IdentitySource.FINGERPRINT
    return Identity(chat, found[0], found[1], avatar, declared), forwarded
