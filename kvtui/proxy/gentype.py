"""Which SillyTavern generation type a request is, judged from the wire alone (pure functions).

SillyTavern never says whether a ``/completion`` request is a new turn, a swipe, a continue, a
quiet job or an impersonation. kvtui compares each request with what it remembers of the same
character's last chat turn (:class:`TurnMemory`) and decides:

- **impersonate**: the prompt asks the *user* to speak (instruct input sequence, or a ``\\nName:``
  tail whose name is the user's: SillyTavern swaps ``\\n{user}:`` for ``\\n{char}:`` in ``stop``).
- **quiet**: a 0/1-token request (a cache warm-up), a prompt with no reply-request tail (or the
  instruct system sequence), or an instruction appended after the last reply with no new message.
- **continue**: the last prompt plus text that is a prefix of (or runs on from) the last reply,
  with no line break after the reply.
- **swipe**: the same chat history as the last turn. Regenerate and swipe look identical on the
  wire; kvtui reports ``swipe`` (the seed counts both the same way and neither is a message).
  Only the last :data:`HISTORY_WINDOW` characters of the history decide, so a random World Info
  entry or a ``{{time}}`` macro far above the chat does not turn a swipe into a new turn.
- **normal**: anything else that asks the character to speak — a new message, an edited last user
  message (then regenerated), deleted messages. Only ``normal`` counts as a message.

Quiet and impersonate requests leave the memory alone (they do not change the chat).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from kvtui.proxy.requestbody import render_messages as render_messages
from kvtui.proxy.requestbody import request_n_predict as request_n_predict
from kvtui.proxy.requestbody import request_prompt as request_prompt
from kvtui.proxy.requestbody import request_stop as request_stop
from kvtui.sillytavern.names import NAME_TAIL, NEXT_SPEAKER, STOP_NAME, strip_name_prefix
from kvtui.sillytavern.templates import ControlPrompts, read_controls
from kvtui.slots import GenType

HISTORY_WINDOW = 1024
"""Characters at the end of a history that decide "same turn" when the whole text differs."""

_SCAN = 256  # how far from the end a reply-request tail is looked for
_MARKER_WINDOW = 80  # longer than any instruct marker in _MARKERS

EDITED_WITHIN_S = 30.0
"""When the index has not seen the chat file's previous version: a file written this recently,
whose last reply the prompt lacks, was edited (or had messages deleted) just before the
request: a new turn, not a swipe. Otherwise the index says whether its last change was one."""


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
_TURN_MARKER = re.compile("|".join(_MARKERS[TailRole.USER] + _MARKERS[TailRole.ASSISTANT]))
_ANY_MARKER = re.compile(
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


@dataclass(frozen=True)
class TurnMemory:
    """What kvtui saw of one character's last chat turn (normal, swipe or continue)."""

    prompt: str  # the last prompt sent for a chat turn
    history: str  # that turn's prompt minus its reply-request tail (kept across continues)
    reply: str  # the text generated for that prompt
    user_message: str | None = None  # the last user message in the history, when detectable
    user_name: str | None = None  # learned from stop strings


@dataclass(frozen=True)
class Classification:
    gen_type: GenType
    counts_message: bool
    reason: str
    history: str
    tail: PromptTail
    user_name: str | None = None


@dataclass(frozen=True)
class ChatEvidence:
    """What the chat file says about the request's chat, for the generation type."""

    last_in_prompt: bool
    """The chat's newest (indexable) visible message is in the prompt."""
    last_is_user: bool
    last_speaker: str
    last_text: str
    unseen_speakers: tuple[str, ...] = ()
    """Speakers of the newest messages that are not in the prompt (a swipe hides the last)."""
    unseen_user: bool = False
    written_ago: float | None = None
    """Seconds since the chat file was written, when known."""
    rewritten: bool | None = None
    """Its last change edited or deleted messages (None: unknown, ``written_ago`` decides)."""


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
    cut = [m.start() for m in (NEXT_SPEAKER.search(text), _ANY_MARKER.search(text)) if m]
    return text[: min(cut)].strip() if cut else text.strip()


def _same_window(a: str, b: str) -> bool:
    w = HISTORY_WINDOW
    return a == b or (len(a) >= w and len(b) >= w and a[-w:] == b[-w:])


def _extension(new: str, old: str) -> str | None:
    """What ``new`` adds after ``old`` (tolerating changes far above the end of ``old``)."""
    if new.startswith(old):
        return new[len(old) :]
    if len(old) >= HISTORY_WINDOW and (i := new.rfind(old[-HISTORY_WINDOW:])) >= 0:
        return new[i + HISTORY_WINDOW :]
    return None


def _continues(ext: str, reply: str, character: str | None) -> bool:
    """``ext`` is (part of) the last reply, or the reply run on within the same message.

    SillyTavern 1.19 re-renders the continued message with its name after the old tail
    (``…\\nSeraphina:Seraphina: <reply so far>``), so a leading ``Name: `` is not part of it.
    """
    e, r = ext.strip(), reply.strip()
    e = strip_name_prefix(e, [character] if character else ()).strip()
    if not e:
        return False
    if r.startswith(e):
        return True
    more = e[len(r) :]
    return e.startswith(r) and "\n" not in more and not _ANY_MARKER.search(more)


def _after_reply(text: str, reply: str) -> str:
    stripped, r = text.lstrip(), reply.strip()
    return stripped[len(r) :] if r and stripped.startswith(r) else text


def _has_turn(text: str, names: Iterable[str]) -> bool:
    """A new chat message: a ``Name:`` line of a known speaker or an instruct turn sequence."""
    if _TURN_MARKER.search(text):
        return True
    return any(f"\n{n}:" in text or text.startswith(f"{n}:") for n in names)


def _asks_user(
    tail: PromptTail, character: str | None, user: str | None, stop: Sequence[str]
) -> bool:
    if tail.role is TailRole.USER:
        return True
    if tail.name is None or tail.name == character:
        return False
    return tail.name == user or (character is not None and f"\n{character}:" in stop)


def classify_generation(
    prompt: str,
    *,
    previous: TurnMemory | None = None,
    stop: Sequence[str] = (),
    n_predict: int | None = None,
    character: str | None = None,
    user_name: str | None = None,
    declared: GenType | None = None,
    chat: ChatEvidence | None = None,
) -> Classification:
    """Classify one text prompt for ``character`` given its last chat turn (``previous``).

    ``previous`` must be the last turn of the same chat and character. ``chat`` (what the chat
    file holds, from the identity evidence) tells a swipe or a continue as the first action
    after a chat was opened from a new turn: alone when there is no ``previous``, and over a
    ``previous`` that would make it a new turn (that memory is older than the chat file).
    """
    names = stop_names(stop)
    user = user_name or (previous.user_name if previous else None)
    known = [n for n in (character, user, *names) if n]
    tail = split_tail(prompt, known)
    history = prompt[: len(prompt) - len(tail.text)]

    def result(gen_type: GenType, reason: str) -> Classification:
        learned = user
        if learned is None and gen_type is not GenType.IMPERSONATE:
            learned = next((n for n in names if n != character), None)
        normal = gen_type is GenType.NORMAL
        return Classification(gen_type, normal, reason, history, tail, learned)

    if declared is not None:
        return result(declared, "declared by the client")
    if _asks_user(tail, character, user, stop):
        return result(GenType.IMPERSONATE, "the prompt asks the user to speak")
    if n_predict is not None and 0 <= n_predict <= 1:
        return result(GenType.QUIET, f"n_predict={n_predict}: a cache warm-up, not a reply")
    asks_reply = tail.present and tail.role is not TailRole.SYSTEM
    judged = _from_chat(chat, history, asks_reply, character) if chat is not None else None
    if previous is None:
        if judged is not None:
            return result(*judged)
        if asks_reply:
            return result(GenType.NORMAL, "first turn seen for this character")
        return result(GenType.QUIET, "no reply-request tail")
    by_memory = _by_memory(prompt, history, asks_reply, previous, character, known)
    if judged is not None and judged[0] in _FROM_FILE and by_memory[0] in _OVERRULED:
        # The remembered turn is older than what the chat file shows (a prompt recorded in an
        # earlier session, messages written without kvtui): the chat file is the present.
        return result(judged[0], judged[1] + "; the remembered turn is out of date")
    return result(*by_memory)


_FROM_FILE = frozenset({GenType.SWIPE, GenType.CONTINUE})
_OVERRULED = frozenset({GenType.NORMAL, GenType.QUIET})


def _by_memory(
    prompt: str,
    history: str,
    asks_reply: bool,
    previous: TurnMemory,
    character: str | None,
    known: Sequence[str],
) -> tuple[GenType, str]:
    """The type from the last turn kvtui saw of this chat and character."""
    ext = _extension(prompt, previous.prompt)
    if ext is not None and _continues(ext, previous.reply, character):
        return GenType.CONTINUE, "the last prompt plus the last reply's text"
    if asks_reply and _same_window(history, previous.history):
        return GenType.SWIPE, "same chat history as the last turn"
    if not asks_reply:
        return GenType.QUIET, "no reply-request tail"
    grown = _extension(history, previous.prompt)
    if grown is not None:
        added = _after_reply(grown, previous.reply)
        if added.strip() and not _has_turn(added, known):
            return GenType.QUIET, "an instruction after the last reply, no new message"
        return GenType.NORMAL, "new message(s) since the last reply"
    return GenType.NORMAL, "the chat history changed"


def _from_chat(
    chat: ChatEvidence, history: str, asks_reply: bool, character: str | None
) -> tuple[GenType, str] | None:
    """The type from the chat file alone (no earlier turn of this chat and character seen)."""
    by_character = not chat.last_is_user and (character is None or chat.last_speaker == character)
    last = chat.last_text.strip()
    if not asks_reply:
        if by_character and last and history.rstrip().endswith(last):
            return GenType.CONTINUE, "the prompt ends with the chat's last reply, re-rendered"
        return None
    if chat.last_in_prompt or chat.unseen_user:
        return None
    if character is not None and character not in chat.unseen_speakers:
        return None
    edited = chat.rewritten
    if edited is None:
        edited = chat.written_ago is not None and chat.written_ago < EDITED_WITHIN_S
    if edited:
        return GenType.NORMAL, "the chat was just rewritten (an edit or delete) before this reply"
    return GenType.SWIPE, "the chat's last reply is not in the prompt: a swipe or regenerate"


def remember(
    previous: TurnMemory | None, result: Classification, prompt: str, reply: str
) -> TurnMemory | None:
    """The character's memory after a generation ``result`` of ``prompt`` produced ``reply``."""
    if result.gen_type in (GenType.QUIET, GenType.IMPERSONATE):
        return previous
    if result.gen_type is GenType.CONTINUE and previous is not None:
        return replace(previous, prompt=prompt, reply=reply)
    user = result.user_name or (previous.user_name if previous else None)
    return TurnMemory(
        prompt=prompt,
        history=result.history,
        reply=reply,
        user_message=last_user_message(result.history, user),
        user_name=user,
    )


def classify_request(
    body: Mapping[str, Any],
    previous: TurnMemory | None,
    *,
    character: str | None = None,
    user_name: str | None = None,
    declared: GenType | None = None,
    chat: ChatEvidence | None = None,
    prompts: ControlPrompts | None = None,
) -> Classification | None:
    """:func:`classify_generation` on a request body; None when its prompt is token ids.

    ``prompts``: SillyTavern's Chat Completion control prompts (from ``settings.json``); a
    request ending in the impersonation prompt is an impersonation.
    """
    prompt = request_prompt(body, prompts)
    if prompt is None:
        return None
    messages = body.get("messages")
    if declared is None and isinstance(messages, list) and body.get("prompt") is None:
        if read_controls(messages, prompts=prompts).impersonating:
            declared_by_prompt = classify_generation(prompt, character=character)
            return replace(
                declared_by_prompt,
                gen_type=GenType.IMPERSONATE,
                counts_message=False,
                reason="the request ends with SillyTavern's impersonation prompt",
            )
    return classify_generation(
        prompt,
        previous=previous,
        stop=request_stop(body),
        n_predict=request_n_predict(body),
        character=character,
        user_name=user_name,
        declared=declared,
        chat=chat,
    )
