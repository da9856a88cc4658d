"""After a reply: put back in the slot what the next turn begins with (``recall_refresh``).

A recall near the end of the prompt (an Author's Note at depth 0 or 1) sits between the user's
message and the reply the model wrote after it. The next turn's prompt has the reply there
instead, and the recall further down: the cache's first difference is where this turn's recall
began, so the reply and everything after it would be prefilled again — on the user's time.

kvtui owns the slot, so once the reply is through it prefills, in the background, the request
as sent *without* this turn's recall followed by the reply (:attr:`RecallOutcome.settled`).
That is what the next turn's prompt begins with; its own prefill is then only the user's new
message and the new recall. What the model reads is unchanged. A swipe or a regenerate of the
same turn then prefills this turn's recall again (its tokens and the text after it).

A text prompt is refreshed as it is; a Chat Completion request is rendered by the server's own
chat template (``/apply-template``, the reply as an open assistant message). Nothing is done
when the recall is not in the prompt's second half (a macro at the top of the prompt does not
move down with the chat, so a refresh would prefill the whole chat for nothing), or when the
reply is empty. The reply is written back as SillyTavern writes it in the next prompt: trimmed,
after a space when the prompt ends with the speaker's ``Name:``; a continue's text goes on the
message as it was written.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvtui.recall.outcome import RecallOutcome

NEAR_END = 0.5
"""The most of the prompt that may follow the recall for a refresh to be worth it."""


@dataclass(frozen=True)
class Refresh:
    """What to prefill: a text prompt, or messages to render with the server's template."""

    prompt: str | None = None
    messages: list[Any] | None = None


def plan_refresh(outcome: RecallOutcome, reply: str) -> Refresh | None:
    """The refresh after ``reply`` to the request recall turned into ``outcome`` (``None``:
    nothing to do)."""
    settled, t = outcome.settled, outcome.telemetry
    raw, reply = reply, reply.strip()  # as SillyTavern keeps it
    if settled is None or not reply or not outcome.text:
        return None
    prompt = settled.get("prompt")
    if isinstance(prompt, str):
        sent = outcome.body.get("prompt")
        if t.chars_after is None or not isinstance(sent, str) or not sent:
            return None
        if t.chars_after > NEAR_END * len(sent):
            return None
        return Refresh(prompt=prompt + _written_back(prompt, raw))
    messages = settled.get("messages")
    if not isinstance(messages, list) or not _near_end(outcome.body.get("messages"), outcome.text):
        return None
    last = messages[-1] if messages else None
    if isinstance(last, Mapping) and last.get("role") == "assistant":  # a continue
        content = last.get("content")
        if not isinstance(content, str):
            return None
        return Refresh(messages=[*messages[:-1], {**last, "content": content + raw.rstrip()}])
    return Refresh(messages=[*messages, {"role": "assistant", "content": reply}])


def _near_end(messages: object, text: str) -> bool:
    """Whether ``text`` is in the second half of ``messages`` (counted in characters)."""
    if not isinstance(messages, list):
        return False
    contents = [str(m.get("content", "")) if isinstance(m, Mapping) else "" for m in messages]
    total = sum(len(c) for c in contents)
    seen = 0
    for content in reversed(contents):
        seen += len(content)
        if text in content:
            return seen - content.rfind(text) - len(text) <= NEAR_END * total
    return False


def _written_back(prompt: str, reply: str) -> str:
    """``reply`` as the next prompt has it after ``prompt``: after a speaker's ``Name:`` a
    space and the trimmed text, after a line break the trimmed text; after a message's own
    text (a continue) the text goes on as it was written."""
    if prompt.endswith(":"):
        return " " + reply.strip()
    if not prompt or prompt[-1].isspace():
        return reply.strip()
    return reply.rstrip()
