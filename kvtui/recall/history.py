"""The chat inside a generation request: its messages, the user's last message, the recall key.

Recall needs three things from a request: the last messages (to scan for memory keywords), the
user's last message and the chat's length (the key a cached recall is valid for). They come from:

- the companion extension's ``kvtui.user_message`` ``{"index", "hash"}`` when it sent one (the
  chat index is the length; exact, and unaffected by context trimming);
- a **text-completion prompt** as SillyTavern renders it: the history is the prompt minus its
  reply-request tail; a message starts at a ``\\nName:`` line of a known speaker (the persona,
  the character, the names in ``stop``) or at an instruct turn sequence; messages before the last
  chat-start line (``***``, ``<START>``, ``[Start a new Chat]``) are example dialogue and left out;
- a **chat-completion message list**: the ``user`` and ``assistant`` messages (system messages and
  SillyTavern's ``example_*`` ones are not chat).

The recall macros are removed from every text first, so the key and the keyword scan never depend
on what kvtui itself injected.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from kvtui.proxy.gentype import request_stop, split_tail, stop_names
from kvtui.recall.macro import strip_macros

WINDOW = 1024
"""Characters of history hashed as the "user message" when no user message can be found."""

_USER_MARKERS = (
    r"<\|im_start\|>user",
    r"<\|start_header_id\|>user<\|end_header_id\|>",
    r"<\|user\|>",
    r"<start_of_turn>user",
    r"\[INST\]",
    r"###\s*(?:Instruction|Input|User):?",
)
_ASSISTANT_MARKERS = (
    r"<\|im_start\|>assistant",
    r"<\|start_header_id\|>assistant<\|end_header_id\|>",
    r"<\|assistant\|>",
    r"<start_of_turn>model",
    r"\[/INST\]",
    r"###\s*(?:Response|Assistant):?",
)
_SYSTEM_MARKERS = (
    r"<\|im_start\|>system",
    r"<\|start_header_id\|>system<\|end_header_id\|>",
    r"<\|system\|>",
    r"###\s*System:?",
)
_ROLE_PATTERNS = [
    ("user", re.compile("|".join(_USER_MARKERS))),
    ("assistant", re.compile("|".join(_ASSISTANT_MARKERS))),
    ("system", re.compile("|".join(_SYSTEM_MARKERS))),
]
_END_TOKENS = re.compile(r"<\|im_end\|>|<\|eot_id\|>|</s>|<end_of_turn>|<\|end\|>")
_CHAT_START = re.compile(r"(?:^|\n)[ \t]*(?:\*\*\*|<START>|\[Start a new Chat\])[ \t]*(?=\n|\Z)")


class KeySource(StrEnum):
    EXTENSION = "extension"
    PROMPT = "prompt"
    MESSAGES = "messages"


@dataclass(frozen=True)
class ChatMessage:
    speaker: str | None
    text: str
    is_user: bool

    def scan_text(self, include_names: bool) -> str:
        if include_names and self.speaker and not self.text.startswith(f"{self.speaker}:"):
            return f"{self.speaker}: {self.text}"
        return self.text


@dataclass(frozen=True)
class RecallKey:
    """What a cached recall is valid for: the user's last message and the chat's length."""

    user_hash: str
    length: int
    previous_hash: str | None = None  # the user message before it, when known
    window_hash: str | None = None  # the scanned messages (an edit inside them matters too)

    def to_json(self) -> dict[str, Any]:
        return {
            "user_hash": self.user_hash,
            "length": self.length,
            "previous": self.previous_hash,
            "window": self.window_hash,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RecallKey:
        prev, window = data.get("previous"), data.get("window")
        return cls(
            str(data["user_hash"]),
            int(data["length"]),
            str(prev) if prev else None,
            str(window) if window else None,
        )


class Change(StrEnum):
    """How a request's key relates to the cached one."""

    SAME = "same"  # the user's message, the chat length and the scanned messages are unchanged
    NEXT_TURN = "next_turn"  # the chat moved on: a new user turn
    EDITED = "edited"  # same length, the user's last message changed
    SCANNED_EDITED = "scanned_edited"  # same user message and length, a scanned message changed
    DELETED = "deleted"  # the chat is shorter: messages were deleted


def compare(old: RecallKey, new: RecallKey) -> Change:
    if new.user_hash == old.user_hash and new.length == old.length:
        if old.window_hash is not None and new.window_hash not in (None, old.window_hash):
            return Change.SCANNED_EDITED
        return Change.SAME
    if new.length > old.length:
        return Change.NEXT_TURN
    if new.previous_hash is not None and new.previous_hash == old.user_hash:
        return Change.NEXT_TURN  # the context is full: old messages fell off the top
    if new.length == old.length:
        return Change.EDITED
    return Change.DELETED


def text_hash(text: str) -> str:
    return hashlib.sha1(text.strip().encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class ChatView:
    """The chat as one request shows it."""

    messages: tuple[ChatMessage, ...]
    key: RecallKey
    source: KeySource

    def scan_window(self, depth: int, include_names: bool) -> list[str]:
        """The last ``depth`` messages' texts, newest first (World Info's order)."""
        recent = self.messages[-depth:] if depth > 0 else ()
        return [m.scan_text(include_names) for m in reversed(recent)]


def _user_key(messages: Sequence[ChatMessage], fallback: str) -> RecallKey:
    users = [i for i, m in enumerate(messages) if m.is_user]
    if not users:
        return RecallKey("window:" + text_hash(fallback[-WINDOW:]), len(messages))
    last = messages[users[-1]]
    previous = messages[users[-2]].text if len(users) > 1 else None
    return RecallKey(
        text_hash(last.text),
        len(messages),
        text_hash(previous) if previous is not None else None,
    )


def _prompt_messages(history: str, names: Sequence[str], user: str | None) -> list[ChatMessage]:
    starts = [m.end() for m in _CHAT_START.finditer(history)]
    begin = starts[-1] if starts else 0
    tokens: list[tuple[int, int, str, str | None]] = []  # start, end, role, speaker
    for role, pattern in _ROLE_PATTERNS:
        tokens += [(m.start(), m.end(), role, None) for m in pattern.finditer(history, begin)]
    if names:
        alternation = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
        name_line = re.compile(r"(?:^|\n)[ \t]*(" + alternation + r"):")
        tokens += [
            (m.start(), m.end(), "name", m.group(1)) for m in name_line.finditer(history, begin)
        ]
    tokens.sort()
    merged: list[list[Any]] = []
    for start, end, role, speaker in tokens:
        if merged and role == "name" and merged[-1][2] != "name":
            gap = history[merged[-1][1] : start]
            if not gap.strip():
                merged[-1][1], merged[-1][3] = end, speaker
                continue
        if merged and start < merged[-1][1]:
            continue
        merged.append([start, end, role, speaker])
    out: list[ChatMessage] = []
    for i, (_start, end, role, speaker) in enumerate(merged):
        stop = merged[i + 1][0] if i + 1 < len(merged) else len(history)
        if role == "system":
            continue
        text = _END_TOKENS.split(history[end:stop])[0].strip()
        is_user = speaker == user if speaker is not None and user else role == "user"
        out.append(ChatMessage(speaker, text, is_user))
    return out


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


_GROUP_PREFIX = re.compile(r"\A([^\n:]{1,64}): ")


def _cc_messages(messages: Iterable[object], macros: Sequence[str]) -> list[ChatMessage]:
    out: list[ChatMessage] = []
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        role = message.get("role")
        name = message.get("name")
        if role not in ("user", "assistant"):
            continue
        if isinstance(name, str) and name.startswith("example_"):
            continue
        text = strip_macros(_content_text(message.get("content")), macros).strip()
        speaker = name if isinstance(name, str) and name else None
        if speaker is None and (m := _GROUP_PREFIX.match(text)):
            speaker, text = m.group(1), text[m.end() :]
        out.append(ChatMessage(speaker, text, role == "user"))
    return out


def user_from_stop(stop: Sequence[str], character: str | None) -> str | None:
    """The persona name from SillyTavern's ``\\nName:`` stop strings (the one non-character)."""
    others = [n for n in stop_names(stop) if n != character]
    return others[0] if len(others) == 1 else None


def chat_view(
    body: Mapping[str, Any],
    *,
    macros: Sequence[str],
    character: str | None = None,
    user_name: str | None = None,
    names: Sequence[str] = (),
    client: Mapping[str, Any] | None = None,
    scan_depth: int = 2,
    include_names: bool = True,
) -> ChatView | None:
    """The chat of a generation ``body`` (before injection); None for token-id prompts.

    ``client`` is the request's ``kvtui`` object (stripped from the body by the proxy).
    """
    messages_field = body.get("messages")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]
    stop = request_stop(body)
    user = user_name or user_from_stop(stop, character)
    if isinstance(prompt, str):
        text = strip_macros(prompt, macros)
        known = [n for n in (user, character, *stop_names(stop), *names) if n]
        tail = split_tail(text, known)
        history = text[: len(text) - len(tail.text)]
        messages = _prompt_messages(history, known, user)
        source, fallback = KeySource.PROMPT, history
    elif isinstance(messages_field, list):
        messages = _cc_messages(messages_field, macros)
        source = KeySource.MESSAGES
        fallback = "\n".join(m.text for m in messages)
    else:
        return None
    key = _user_key(messages, fallback)
    declared = client.get("user_message") if isinstance(client, Mapping) else None
    if isinstance(declared, Mapping):
        index, digest = declared.get("index"), declared.get("hash")
        if isinstance(index, int) and not isinstance(index, bool) and isinstance(digest, str):
            key = RecallKey("ext:" + digest, index + 1, None)
            source = KeySource.EXTENSION
    view = ChatView(tuple(messages), key, source)
    window = view.scan_window(scan_depth, include_names)
    return replace(view, key=replace(key, window_hash=text_hash("\n\x01".join(window))))
