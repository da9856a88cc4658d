"""Who a generation request is for: (chat, character), and how sure kvtui is (pure functions).

SillyTavern sends no chat or character field to llama.cpp. The character comes from, in order:

1. **Explicit**: a ``kvtui`` object in the JSON body (the companion extension's: ``chat``,
   ``character``, ``avatar``, ``group``, ``type``; ``source: "extension"``) or the
   ``X-KVTUI-Chat`` / ``X-KVTUI-Character`` headers (percent-decoded, so non-ASCII names
   survive). The ``kvtui`` key is removed from the body that is forwarded.
2. **The request itself** (:class:`Clue`): a text prompt's reply-request tail ``\\nName:``
   (also after an instruct output sequence); in a group the one member missing from ``stop``
   (SillyTavern stops on every other member, muted ones included); on impersonation the one
   other name in ``stop``; a Chat Completion group's nudge (``[Write the next reply only as
   Mira.]``, see ``kvtui.sillytavern.templates``); then the last plausible speaker line.
3. **The chat**: a one-to-one Chat Completion request names nobody, so the chat found from the
   evidence (below) gives its character.
4. **Fingerprint**: ``unnamed-xxxxxxxx``, a SHA-1 of the prompt's first
   :data:`FINGERPRINT_CHARS` characters (the story string: stable per character and persona).

The chat comes from evidence (:func:`kvtui.proxy.chatidentity.identify`: the chat whose latest
messages the prompt holds, with SillyTavern's state breaking ties) or, in the older
:func:`infer_identity`, from the caller's ``current_chat``. ``Identity.source`` takes the
contract's values: ``explicit``, ``extension``, ``evidence``, ``inferred``, ``fingerprint`` or
``unsure`` (then the router must neither restore over a live cache nor save under the chat).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any
from urllib.parse import unquote

from kvtui.proxy.gentype import (
    ChatEvidence,
    TailRole,
    request_prompt,
    request_stop,
    split_tail,
    stop_names,
)
from kvtui.sillytavern.names import NAME_PREFIX, SPEAKER_LINE
from kvtui.slots import GenType

UNKNOWN_CHAT = "unknown"
FINGERPRINT_CHARS = 512
BODY_KEY = "kvtui"
CHAT_HEADER = "x-kvtui-chat"
CHARACTER_HEADER = "x-kvtui-character"

_LABELS = frozenset(
    {"scenario", "personality", "description", "persona", "example", "examples", "note", "notes"}
    | {"summary", "setting", "system", "user", "assistant", "human", "start", "instruction"}
)


class IdentitySource(StrEnum):
    """Where the identity as a whole came from (the values of the turn log's ``source``)."""

    EXPLICIT = "explicit"  # headers or a kvtui object from any client
    EXTENSION = "extension"  # the companion SillyTavern extension's kvtui object
    EVIDENCE = "evidence"  # the prompt holds the chat's latest messages
    INFERRED = "inferred"  # the chat from SillyTavern's state (or the caller's current chat)
    FINGERPRINT = "fingerprint"  # no name anywhere: a hash of the prompt's beginning
    UNSURE = "unsure"  # the chat cannot be told: never restore over a live cache, never save


class Clue(StrEnum):
    """What named the character."""

    EXPLICIT = "explicit"
    PROMPT_TAIL = "prompt tail"
    STOP_STRINGS = "stop strings"
    GROUP_NUDGE = "group nudge"
    CHAT_MEMBER = "chat member"
    LAST_SPEAKER = "last speaker"
    MESSAGES = "messages"
    CHAT = "chat"  # the chat found from the evidence has one character
    STATE = "state"  # SillyTavern's selected character
    FINGERPRINT = "fingerprint"


@dataclass(frozen=True)
class Identity:
    chat: str
    character: str
    source: IdentitySource
    avatar: str | None = None
    declared_type: GenType | None = None  # a ``type`` the client stated in its kvtui object
    clue: Clue = Clue.EXPLICIT
    """What named the character."""
    confidence: float = 1.0
    """0..1; 0 when unsure."""
    group: str | None = None
    """The group id of a group chat."""
    reason: str = ""
    """How the chat was decided (for the decision log)."""
    candidates: tuple[str, ...] = ()
    """When unsure: the chat ids that were equally likely."""
    evidence: ChatEvidence | None = field(default=None, compare=False)

    @property
    def sure(self) -> bool:
        """False when the chat is a guess: do not restore over a live cache nor save."""
        return self.source is not IdentitySource.UNSURE

    def log_fields(self) -> dict[str, Any]:
        """The identity's part of a turn-log line (``turns.jsonl``) and of the debug log."""
        return {
            "chat": None if self.chat == UNKNOWN_CHAT else self.chat,
            "character": self.character,
            "source": self.source.value,
            "confidence": round(self.confidence, 2),
            "clue": self.clue.value,
            "group": self.group,
            "identity_reason": self.reason or None,
            "candidates": list(self.candidates),
        }

    def describe(self) -> str:
        """One line for the event log, e.g. ``Seraphina in "Seraphina - 2026…" (evidence, 0.9:
        the prompt holds this chat's latest messages)``."""
        where = f'"{self.chat}"' if self.chat != UNKNOWN_CHAT else "an unknown chat"
        if self.candidates and not self.sure:
            where += " (one of " + ", ".join(f'"{c}"' for c in self.candidates) + ")"
        why = f": {self.reason}" if self.reason else ""
        return f"{self.character} in {where} ({self.source.value}, {self.confidence:.1f}{why})"


def fingerprint(prompt: str | Sequence[int]) -> str:
    """``unnamed-xxxxxxxx`` for a prompt's beginning (text, or token ids)."""
    if isinstance(prompt, str):
        head = prompt[:FINGERPRINT_CHARS]
    else:
        head = ",".join(str(t) for t in prompt[:FINGERPRINT_CHARS])
    return "unnamed-" + hashlib.sha1(head.encode("utf-8")).hexdigest()[:8]


def _text(value: object) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


@dataclass(frozen=True)
class Explicit:
    """What the client stated (kvtui object, headers); every field optional."""

    chat: str | None = None
    character: str | None = None
    avatar: str | None = None
    group: str | None = None
    declared: GenType | None = None
    source: IdentitySource = IdentitySource.EXPLICIT


def explicit_identity(body: Mapping[str, Any], headers: Mapping[str, str] | None) -> Explicit:
    """The ``kvtui`` object and ``X-KVTUI-*`` headers of a request."""
    chat = character = avatar = group = None
    declared: GenType | None = None
    source = IdentitySource.EXPLICIT
    obj = body.get(BODY_KEY)
    if isinstance(obj, Mapping):
        chat = _text(obj.get("chat")) or _text(obj.get("chat_id"))
        character = _text(obj.get("character")) or _text(obj.get("name"))
        avatar = _text(obj.get("avatar"))
        group = _text(obj.get("group")) or _text(obj.get("group_id"))
        kind = _text(obj.get("type")) or _text(obj.get("gen_type"))
        if kind in {t.value for t in GenType}:
            declared = GenType(kind)
        if obj.get("source") == "extension":
            source = IdentitySource.EXTENSION
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    chat = chat or _text(unquote(lowered.get(CHAT_HEADER, "")))
    character = character or _text(unquote(lowered.get(CHARACTER_HEADER, "")))
    if character is None and avatar is not None:
        character = avatar.rsplit("/", 1)[-1].removesuffix(".png") or None
    return Explicit(chat, character, avatar, group, declared, source)


def without_kvtui(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body to forward: without the ``kvtui`` object (never mutates ``body``)."""
    return {k: v for k, v in body.items() if k != BODY_KEY}


def last_speaker(
    text: str, candidates: Collection[str] = (), exclude: Collection[str] = ()
) -> str | None:
    """The last ``Name:`` speaker line in ``text`` naming a plausible character.

    With ``candidates`` only those names count; otherwise the name must also appear earlier in
    the text (a card or greeting names its character), which rules out instruction lines such as
    ``Respond in JSON:`` at the end of a quiet prompt.
    """
    for m in reversed(list(SPEAKER_LINE.finditer(text))):
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
) -> tuple[str, Clue] | None:
    tail = split_tail(prompt, [*members, *users])
    history = prompt[: len(prompt) - len(tail.text)]
    impersonating = tail.role is TailRole.USER or (tail.name is not None and tail.name in users)
    if members:
        if tail.name is not None and tail.name in members and not impersonating:
            return tail.name, Clue.PROMPT_TAIL
        missing = [m for m in members if f"\n{m}:" not in stop]
        if len(members) > 1 and len(missing) == 1:
            return missing[0], Clue.STOP_STRINGS
        if len(members) == 1:
            return members[0], Clue.CHAT_MEMBER
        if speaker := last_speaker(history, candidates=members):
            return speaker, Clue.LAST_SPEAKER
    in_stop = stop_names(stop)
    if tail.name is not None and not impersonating:
        return tail.name, Clue.PROMPT_TAIL
    if impersonating:
        others = [n for n in in_stop if n not in users and n != tail.name]
        if len(others) == 1:
            return others[0], Clue.STOP_STRINGS
    exclude = {*in_stop, *users} if not impersonating else {*users, tail.name or ""}
    if speaker := last_speaker(history, exclude=exclude):
        return speaker, Clue.LAST_SPEAKER
    return None


def _from_messages(
    messages: Sequence[object], stop: Sequence[str], members: Sequence[str]
) -> tuple[str, Clue] | None:
    if members:
        missing = [m for m in members if f"\n{m}:" not in stop]
        if len(members) > 1 and len(missing) == 1:
            return missing[0], Clue.STOP_STRINGS
        if len(members) == 1:
            return members[0], Clue.CHAT_MEMBER
    texts = [m.get("content") for m in messages if isinstance(m, Mapping)]
    everything = "\n".join(t for t in texts if isinstance(t, str))
    for message in reversed(messages):
        if not isinstance(message, Mapping) or message.get("role") != "assistant":
            continue
        name = _text(message.get("name"))
        content = message.get("content")
        if name is None and isinstance(content, str) and (m := NAME_PREFIX.match(content)):
            name = m.group(1).strip()
            # Without members a prefix only counts when the name is mentioned elsewhere too
            # (a card or system prompt names its character); "Note:" is not a speaker.
            if not members and (_is_label(name) or everything.count(name) < 2):
                name = None
        if name and (not members or name in members):
            return name, Clue.MESSAGES
    return None


def infer_identity(
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None = None,
    *,
    members: Sequence[str] = (),
    current_chat: str | None = None,
    user_names: Collection[str] = (),
) -> tuple[Identity, dict[str, Any]]:
    """The request's identity with the chat taken from the caller, and the body to forward.

    ``members`` are the active chat's character names (one for a 1:1 chat), ``current_chat`` its
    id, ``user_names`` the user's persona names (they are never taken for a character). For the
    chat from evidence use :func:`kvtui.proxy.chatidentity.identify`.
    """
    forwarded = without_kvtui(body)
    stated = explicit_identity(body, headers)
    chat = stated.chat or current_chat or UNKNOWN_CHAT
    if stated.character is not None:
        identity = Identity(
            chat, stated.character, stated.source, stated.avatar, stated.declared,
            group=stated.group,
        )  # fmt: skip
        return identity, forwarded
    found = character_clue(body, members=members, user_names=user_names)
    source = IdentitySource.FINGERPRINT if found[1] is Clue.FINGERPRINT else IdentitySource.INFERRED
    identity = Identity(chat, found[0], source, stated.avatar, stated.declared, clue=found[1])
    return identity, forwarded


def character_clue(
    body: Mapping[str, Any],
    *,
    members: Sequence[str] = (),
    user_names: Collection[str] = (),
) -> tuple[str, Clue]:
    """Who the request asks to speak, judged from the request alone (a fingerprint at worst).

    ``members``: the chat's character names when known (a tail or stop string naming one of
    them wins); ``user_names``: the user's persona names.
    """
    stop = request_stop(body)
    messages = body.get("messages")
    prompt = body.get("prompt")
    found: tuple[str, Clue] | None = None
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
            found = members[0], Clue.CHAT_MEMBER
    return found if found is not None else (fingerprint(key), Clue.FINGERPRINT)
