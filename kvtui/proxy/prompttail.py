"""The reply request at the end of a text prompt, and the chat turns inside it (pure functions).

SillyTavern ends a prompt with what asks for the next reply: a ``\\nName:`` line, an instruct
sequence (``<|im_start|>assistant``, ``[/INST]``, …), or both. :func:`split_tail` finds it, so
the rest is the chat history; :func:`last_user_message` finds the user's last message in that
history; :func:`stop_names` reads the speakers SillyTavern names in ``stop``. The generation
type (:mod:`kvtui.proxy.gentype`) and the identity (:mod:`kvtui.proxy.identity`) build on these.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from kvtui.sillytavern.names import NAME_TAIL, NEXT_SPEAKER, STOP_NAME

_SCAN = 256  # how far from the end a reply-request tail is looked for
_MARKER_WINDOW = 80  # longer than any instruct marker in _MARKERS


class TailRole(StrEnum):
    ASSISTANT = "assistant"
    USER = "user"
    SYSTEM = "system"


_MARKERS: dict[TailRole, tuple[str, ...]] = {
    TailRole.ASSISTANT: (
        r"<\|im_start\|>assistant",
        r"<\|start_header_id\|>assistant<\|end_header_id\|>",
        r"<\|assistant\|>",
        r"<[|｜]Assistant[|｜]>",
        r"<start_of_turn>model",
        r"\[/INST\]",
        r"<\|CHATBOT_TOKEN\|>",
        r"(?:^|\n)ASSISTANT:",
        r"###\s*(?:Response|Assistant):?",
    ),
    TailRole.USER: (
        r"<\|im_start\|>user",
        r"<\|start_header_id\|>user<\|end_header_id\|>",
        r"<\|user\|>",
        r"<[|｜]User[|｜]>",
        r"<start_of_turn>user",
        r"\[INST\]",
        r"<\|USER_TOKEN\|>",
        r"(?:^|\n)USER:",
        r"###\s*(?:Instruction|Input|User):?",
    ),
    TailRole.SYSTEM: (
        r"<\|im_start\|>system",
        r"<\|start_header_id\|>system<\|end_header_id\|>",
        r"<\|system\|>",
        r"<\|SYSTEM_TOKEN\|>",
        r"(?:^|\n)SYSTEM:",
        r"###\s*System:?",
    ),
}
_AT_END = [(role, re.compile(f"(?:{p})\\s*\\Z")) for role, ps in _MARKERS.items() for p in ps]
TURN_MARKER = re.compile("|".join(_MARKERS[TailRole.USER] + _MARKERS[TailRole.ASSISTANT]))
ANY_MARKER = re.compile(
    "|".join(p for ps in _MARKERS.values() for p in ps) + r"|<\|[^|>\n]{1,30}\|>|</s>|<end_of_turn>"
)
_ROLE_WORDS = frozenset({"ASSISTANT", "USER", "SYSTEM", "HUMAN"})


@dataclass(frozen=True)
class PromptTail:
    """The reply request at the end of a prompt: ``\\nName:`` and/or an instruct sequence."""

    text: str = ""
    name: str | None = None
    role: TailRole | None = None

    @property
    def present(self) -> bool:
        return bool(self.text)


def stop_names(stop: Iterable[str]) -> list[str]:
    """Names in SillyTavern's ``\\nName:`` stop strings, in order."""
    return [m.group(1) for s in stop if isinstance(s, str) and (m := STOP_NAME.match(s))]


def _marker_at_end(text: str) -> tuple[TailRole, int] | None:
    # Every marker is short and only whitespace may follow it: look at the trimmed end only.
    trimmed = text.rstrip()
    start = max(len(trimmed) - _MARKER_WINDOW, 0)
    end = trimmed[start:]
    for role, pattern in _AT_END:
        if m := pattern.search(end):
            return role, start + m.start()
    return None


def _plausible(name: str, before: str, known: Iterable[str]) -> bool:
    if name in known:
        return True
    if name.upper() in _ROLE_WORDS or not any(c.isalpha() for c in name):
        return False
    return name in before  # a real speaker is named earlier (card, greeting, chat lines)


def split_tail(prompt: str, known_names: Iterable[str] = ()) -> PromptTail:
    """The reply-request tail; ``prompt[: len(prompt) - len(tail.text)]`` is the history part."""
    end = prompt[-_SCAN:]
    if m := NAME_TAIL.search(end):
        head = prompt[: len(prompt) - len(end) + m.start()]
        raw = m.group("name")
        name = raw.strip()
        head_ws = head + raw[: len(raw) - len(raw.lstrip())]
        marker = _marker_at_end(head_ws)
        trimmed = head_ws.rstrip(" \t")
        if (marker or not trimmed or trimmed.endswith("\n")) and _plausible(
            name, head, known_names
        ):
            start = marker[1] if marker else max(len(trimmed) - 1, 0)
            return PromptTail(prompt[start:], name, marker[0] if marker else None)
    if marker := _marker_at_end(prompt):
        return PromptTail(prompt[marker[1] :], None, marker[0])
    return PromptTail()


def last_user_message(history: str, user_name: str | None) -> str | None:
    """The text of the last user message in ``history`` (``\\nUser:`` line or input sequence)."""
    start = history.rfind(f"\n{user_name}:") if user_name else -1
    if start >= 0:
        start += len(user_name or "") + 2
    else:
        found = [m.end() for m in re.finditer("|".join(_MARKERS[TailRole.USER]), history)]
        if not found:
            return None
        start = found[-1]
    text = history[start:]
    cut = [m.start() for m in (NEXT_SPEAKER.search(text), ANY_MARKER.search(text)) if m]
    return text[: min(cut)].strip() if cut else text.strip()


def has_turn(text: str, names: Iterable[str]) -> bool:
    """A new chat message: a ``Name:`` line of a known speaker or an instruct turn sequence."""
    if TURN_MARKER.search(text):
        return True
    return any(f"\n{n}:" in text or text.startswith(f"{n}:") for n in names)
