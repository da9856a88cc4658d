"""SillyTavern-shaped traffic for the benchmarks (reference/sillytavern.md §6-7).

The request body is the one SillyTavern's text-completion backend sends to llama.cpp's
``/completion`` (no ``id_slot``, ``cache_prompt: true``); prompts are non-instruct: the story
string (system prompt, the speaker's card, scenario, persona), the chat lines ``Name: text`` and
the ``\\nName:`` tail; in groups the stop strings name the user and every other member. Text is
printable ASCII prose (the tiny model's tokenizer is byte-level: roughly one token per 2-3
characters of English), generated from a fixed seed so every run sends the same bytes.
"""

from __future__ import annotations

import json
import os
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

USER = "Alex"

ST_BODY: dict[str, Any] = {
    "model": "", "max_new_tokens": 300, "max_tokens": 300,
    "temperature": 0.7, "top_p": 0.5, "typical_p": 1, "typical": 1, "min_p": 0,
    "repetition_penalty": 1.2, "frequency_penalty": 0, "presence_penalty": 0, "top_k": 40,
    "skew": 0, "min_tokens": 0, "add_bos_token": True, "smoothing_factor": 0,
    "smoothing_curve": 1, "dry_allowed_length": 2, "dry_multiplier": 0, "dry_base": 1.75,
    "dry_penalty_last_n": 0, "max_tokens_second": 0,
    "samplers": ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc",
                 "temperature", "adaptive_p"],
    "truncation_length": 8192, "ban_eos_token": False, "skip_special_tokens": True,
    "include_reasoning": True, "top_a": 0, "tfs": 1, "mirostat_mode": 0, "mirostat_tau": 5,
    "mirostat_eta": 0.1, "custom_token_bans": "", "banned_strings": [],
    "api_type": "llamacpp", "api_server": "http://127.0.0.1:8081",
    "xtc_threshold": 0.1, "xtc_probability": 0, "nsigma": 0, "top_n_sigma": 0, "min_keep": 0,
    "n": 1, "rep_pen": 1.2, "rep_pen_range": 0, "repetition_penalty_range": 0,
    "guidance_scale": 1, "negative_prompt": "", "repeat_penalty": 1.2, "repeat_last_n": 0,
    "n_predict": 300, "num_predict": 300, "num_ctx": 8192, "mirostat": 0, "ignore_eos": False,
    "rep_pen_slope": 1, "logit_bias": [], "grammar": "", "cache_prompt": True,
    "dry_sequence_breakers": ["\n", ":", '"', "*"], "seed": 7,
}  # fmt: skip


def st_body(
    prompt: str,
    stop: list[str],
    *,
    stream: bool = True,
    n_predict: int = 300,
    ignore_eos: bool = False,
) -> dict[str, Any]:
    """A request body exactly as SillyTavern sends it to llama.cpp's ``/completion``."""
    body = dict(ST_BODY, prompt=prompt, stop=stop, stopping_strings=stop, stream=stream)
    for key in ("max_new_tokens", "max_tokens", "n_predict", "num_predict"):
        body[key] = n_predict
    body["ignore_eos"] = ignore_eos
    return body


def group_stop(speaker: str, members: list[str], user: str = USER) -> list[str]:
    """SillyTavern's group stop strings: the user and every member but the speaker."""
    return [f"\n{user}:"] + [f"\n{m}:" for m in members if m != speaker]


_WORDS = (
    "the forest river night camp fire path bridge stone light shadow wind rain old map road "
    "trail village tower gate blade bow arrow herb potion cloak lantern moon star mist hill "
    "valley wolf raven oak pine root leaf song story promise journey morning evening dawn dusk "
    "quiet gentle brave careful tired hungry warm cold distant hidden ancient bright dark soft "
    "walks watches listens smiles frowns whispers laughs waits kneels points carries remembers "
    "follows guards heals sings tells asks answers nods sighs turns looks reaches holds leads "
    "and but while because before after under over across beside toward through near again"
).split()


class Prose:
    """Deterministic printable-ASCII prose: sentences of plausible words."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def sentence(self, words: int) -> str:
        picked = [self.rng.choice(_WORDS) for _ in range(words)]
        text = " ".join(picked)
        return text[0].upper() + text[1:] + self.rng.choice(".....!?")

    def paragraph(self, n_chars: int, words: tuple[int, int] = (6, 16)) -> str:
        parts: list[str] = []
        size = 0
        while size < n_chars:
            sentence = self.sentence(self.rng.randint(*words))
            parts.append(sentence)
            size += len(sentence) + 1
        return " ".join(parts)

    def line(self, n_chars: int, action: bool = True) -> str:
        """A chat message of about ``n_chars``: sometimes an *action*, then speech."""
        text = self.paragraph(n_chars, words=(3, 7))
        if action and self.rng.random() < 0.5:
            head, _, rest = text.partition(". ")
            text = f"*{head}.* {rest}" if rest else f"*{head}*"
        return text


def story_string(name: str, system: str, card: str, scenario: str, persona: str) -> str:
    """SillyTavern's default story string for ``name`` (non-instruct), with the separator."""
    return (
        f"{system}\n{card}\n{name}'s personality: loyal, curious, stubborn.\n"
        f"Scenario: {scenario}\n{persona}\n***\n"
    )


def chat_prompt(story: str, lines: list[tuple[str, str]], speaker: str) -> str:
    """Story string, the chat lines, and the ``\\nSpeaker:`` tail."""
    return story + "".join(f"{who}: {text}\n" for who, text in lines) + f"{speaker}:"


def write_chat_line(path: Path, name: str, is_user: bool, text: str) -> None:
    """What SillyTavern does after a message: rewrite the whole chat file atomically (temp file,
    rename), the new line at the end, no trailing newline. Its mtime makes it the active chat."""
    line = {
        "name": name,
        "is_user": is_user,
        "is_system": False,
        "send_date": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "mes": text,
        "extra": {"isSmallSys": False},
    }
    content = path.read_text(encoding="utf-8") + "\n" + json.dumps(line, separators=(",", ":"))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)


def edit_last_user_line(path: Path, text: str) -> None:
    """The user edits their last message and regenerates: the file ends at that message, with
    the new text (the replies after it are replaced by the regeneration)."""
    lines = path.read_text(encoding="utf-8").split("\n")
    last = max(i for i, line in enumerate(lines) if i and json.loads(line).get("is_user"))
    message = json.loads(lines[last])
    message["mes"] = text
    lines = [*lines[:last], json.dumps(message, separators=(",", ":"))]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, path)


def unmute_all(group_file: Path) -> None:
    """Make every member of a SillyTavern group speak (the sample mutes Brann)."""
    data = json.loads(group_file.read_text(encoding="utf-8"))
    data["disabled_members"] = []
    group_file.write_text(json.dumps(data, indent=4), encoding="utf-8")


def last_sse_event(raw: bytes) -> dict[str, Any]:
    """The last ``data:`` JSON event of a Server-Sent Events body."""
    for block in reversed(raw.replace(b"\r\n", b"\n").split(b"\n\n")):
        block = block.strip()
        if block.startswith(b"data:"):
            data = block[5:].strip()
            if data and data != b"[DONE]":
                result: dict[str, Any] = json.loads(data)
                return result
    raise ValueError("no SSE data event in the reply")
