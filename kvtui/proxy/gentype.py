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

Quiet and impersonate requests leave the memory alone (they do not change the chat). Finding the
reply-request tail and the turns in a prompt is :mod:`kvtui.proxy.prompttail`'s (re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kvtui.proxy.prompttail import (
    ANY_MARKER,
    PromptTail,
    TailRole,
    has_turn,
    last_user_message,
    split_tail,
    stop_names,
)
from kvtui.proxy.requestbody import render_messages, request_n_predict, request_prompt, request_stop
from kvtui.sillytavern.names import strip_name_prefix
from kvtui.sillytavern.templates import ControlPrompts, read_controls
from kvtui.slots import GenType

__all__ = [
    "EDITED_WITHIN_S",
    "HISTORY_WINDOW",
    "ChatEvidence",
    "Classification",
    "PromptTail",
    "TailRole",
    "TurnMemory",
    "classify_generation",
    "classify_request",
    "last_user_message",
    "remember",
    "render_messages",
    "request_n_predict",
    "request_prompt",
    "request_stop",
    "split_tail",
    "stop_names",
]

HISTORY_WINDOW = 1024
"""Characters at the end of a history that decide "same turn" when the whole text differs."""

EDITED_WITHIN_S = 30.0
"""When the index has not seen the chat file's previous version: a file written this recently,
whose last reply the prompt lacks, was edited (or had messages deleted) just before the
request: a new turn, not a swipe. Otherwise the index says whether its last change was one."""


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
    return e.startswith(r) and "\n" not in more and not ANY_MARKER.search(more)


def _after_reply(text: str, reply: str) -> str:
    stripped, r = text.lstrip(), reply.strip()
    return stripped[len(r) :] if r and stripped.startswith(r) else text


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
        if added.strip() and not has_turn(added, known):
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
