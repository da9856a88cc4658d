"""The parts of a generation request body kvtui reads: prompt text, stop strings, length.

``/completion`` bodies carry ``prompt`` (text, a batch, or token ids); ``/v1/chat/completions``
bodies carry ``messages``, which are rendered as ChatML text so they classify like a text prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvtui.sillytavern.templates import ControlPrompts, content_text, read_controls


def render_messages(messages: Sequence[object]) -> str:
    """A chat-completions message list as ChatML text, so it classifies like a text prompt.

    A final assistant message is a prefill (SillyTavern's continue) and stays open.
    """
    parts: list[str] = []
    last_role = ""
    for message in messages:
        if not isinstance(message, Mapping):
            continue
        last_role = str(message.get("role", "user"))
        text = content_text(message.get("content"))
        name = message.get("name")
        if isinstance(name, str) and name and not text.startswith(f"{name}:"):
            text = f"{name}: {text}"
        parts.append(f"<|im_start|>{last_role}\n{text}<|im_end|>\n")
    if last_role == "assistant":
        parts[-1] = parts[-1].removesuffix("<|im_end|>\n")
    else:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def request_prompt(body: Mapping[str, Any], prompts: ControlPrompts | None = None) -> str | None:
    """The prompt text of a ``/completion`` or ``/v1/(chat/)completions`` body (None for ids).

    Chat Completion messages are rendered as ChatML without SillyTavern's continue nudge, so
    the message being continued is the open end (like a text continue).
    """
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch of prompts: the first decides
    if isinstance(prompt, str):
        return prompt
    messages = body.get("messages")
    if isinstance(messages, list) and messages:
        return render_messages(read_controls(messages, prompts=prompts).messages)
    return None


def request_stop(body: Mapping[str, Any]) -> list[str]:
    stop = body.get("stop")
    if isinstance(stop, str):
        return [stop]
    return [s for s in stop if isinstance(s, str)] if isinstance(stop, list) else []


def request_n_predict(body: Mapping[str, Any]) -> int | None:
    for key in ("n_predict", "max_tokens", "max_completion_tokens"):
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None
