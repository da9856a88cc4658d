"""The demo's scripted SillyTavern conversation, played through kvtui's real routing proxy.

``kvtui demo`` runs llama-server with fewer slots than the sample group has speakers. This script
then does what SillyTavern 1.19 does when Alex chats (Text Completion, llama.cpp, non-instruct):
it writes Alex's message into the chat file, sends the generation request SillyTavern would send
(the prompt assembled from the speaker's card and the chat, ending ``\\nName:``; in a group
``stop`` holds every *other* member, the user and ``\\n***``), streams the reply and writes it
into the chat file. Swipes resend the same prompt and grow the message's ``swipes``; a chat switch
is the user writing in another chat. Nothing is faked on kvtui's side: the proxy infers who is
speaking, routes, autosaves, evicts and restores exactly as it would for SillyTavern.

Pure data (:data:`SCRIPT`, :func:`request_body`) is kept apart from the I/O (:class:`DemoPlayer`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import httpx

from kvtui.atomic import write_atomic
from kvtui.errors import KvtuiError
from kvtui.sillytavern import ChatRef, SillyTavernData
from kvtui.sillytavern.prompt import assemble_prompt

PARTY = "2026-05-03@19h02m11s004ms"
"""The sample group "Forest Party"'s chat id."""
SOLO = "Seraphina - 2026-05-03@18h45m46s123ms"
"""The sample 1:1 chat with Seraphina."""

N_PREDICT = 16
"""Tokens per reply: the tiny model speaks gibberish, so a short line is enough to watch."""
MAX_PROMPT_CHARS = 1900
"""Prompt budget (the tiny model's tokens are at most one per character; slots hold 2048)."""
SPEAKERS_IN_GROUP = 4
"""Distinct speakers of the group part of the script (an eviction needs more than the slots)."""


class Turn(StrEnum):
    NORMAL = "normal"
    SWIPE = "swipe"


@dataclass(frozen=True)
class Step:
    """One generation of the script: optionally Alex's message first, then one reply."""

    chat: str
    speaker: str
    user_text: str | None = None
    turn: Turn = Turn.NORMAL
    watch: str = ""
    """What a newcomer should watch for in the table during this step."""


SCRIPT: tuple[Step, ...] = (
    Step(PARTY, "Seraphina", "Good morning! Is everyone awake?",
         watch="Seraphina gets a slot of her own (routing by the prompt's last line)."),
    Step(PARTY, "Kael", watch="Kael gets the next slot: one request per group member."),
    Step(PARTY, "Mira", watch="Mira takes the last free slot."),
    Step(PARTY, "Mira", turn=Turn.SWIPE,
         watch="A swipe: same prompt again, Mira's slot answers from its cache."),
    Step(PARTY, "Brann", "Brann, wake up! Breakfast is ready.",
         watch="Brann (muted, forced to talk) needs a slot: the least used one is saved "
         "and evicted."),
    Step(PARTY, "Seraphina", "Seraphina, what do you see on the road ahead?",
         watch="Seraphina comes back: someone is evicted and her save is restored."),
    Step(PARTY, "Kael", watch="Kael again: evicted earlier, restored from his save."),
    Step(SOLO, "Seraphina", "*I walk back to the glade.* Can we talk alone?",
         watch="A chat switch: everyone used is saved, the slots are cleared."),
    Step(SOLO, "Seraphina", "Thank you for the tea.",
         watch="Seraphina's second message in this chat: an autosave is due."),
    Step(PARTY, "Mira", "*Back at camp.* Mira, is the tea ready?",
         watch="Back to Forest Party: Mira's cache is restored from the chat-switch save."),
    Step(PARTY, "Kael", watch="Kael is restored too; his autosave counter carries on."),
    Step(PARTY, "Kael", turn=Turn.SWIPE, watch="One more swipe, answered from Kael's slot."),
)  # fmt: skip
"""The whole scripted conversation, in order."""


def stop_strings(user: str, speaker: str, members: Sequence[str], group: bool) -> list[str]:
    """SillyTavern's stop strings: the user, and in a group every other member and ``\\n***``."""
    stops = [f"\n{user}:"]
    if group:
        stops += [f"\n{name}:" for name in members if name != speaker]
        stops.append("\n***")
    return stops


def request_body(prompt: str, stop: Sequence[str], proxy_url: str) -> dict[str, Any]:
    """The body SillyTavern 1.19 sends for a Text Completion (llama.cpp) generation."""
    return {
        "prompt": prompt, "model": "", "max_new_tokens": N_PREDICT, "max_tokens": N_PREDICT,
        "temperature": 0.7, "top_p": 0.5, "typical_p": 1, "min_p": 0,
        "repetition_penalty": 1.2, "frequency_penalty": 0, "presence_penalty": 0, "top_k": 40,
        "min_tokens": 0, "add_bos_token": True, "stopping_strings": list(stop),
        "stop": list(stop), "truncation_length": 2048, "ban_eos_token": False,
        "skip_special_tokens": True, "api_type": "llamacpp", "api_server": proxy_url,
        "n": 1, "repeat_penalty": 1.2, "repeat_last_n": 0, "n_predict": N_PREDICT,
        "num_predict": N_PREDICT, "num_ctx": 2048, "ignore_eos": False, "logit_bias": [],
        "grammar": "", "cache_prompt": True, "stream": True,
    }  # fmt: skip


def _now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def user_line(name: str, text: str) -> dict[str, Any]:
    """A user message as SillyTavern saves it."""
    return {
        "name": name, "is_user": True, "is_system": False, "send_date": _now(), "mes": text,
        "extra": {"isSmallSys": False},
        "force_avatar": "/thumbnail?type=persona&file=user-default.png",
    }  # fmt: skip


def reply_line(name: str, avatar: str | None, text: str, group: bool) -> dict[str, Any]:
    """A character's reply as SillyTavern saves it (one swipe)."""
    when = _now()
    line: dict[str, Any] = {
        "name": name, "is_user": False, "send_date": when, "mes": text, "title": "",
        "extra": {"api": "llamacpp", "model": "tiny-demo.gguf"},
        "gen_started": when, "gen_finished": when, "swipe_id": 0, "swipes": [text],
        "swipe_info": [{"send_date": when, "gen_started": when, "gen_finished": when,
                        "extra": {}}],
    }  # fmt: skip
    if group and avatar:
        line["force_avatar"] = f"/thumbnail?type=avatar&file={avatar}"
        line["original_avatar"] = avatar
    return line


def add_swipe(line: dict[str, Any], text: str) -> dict[str, Any]:
    """``line`` with a newly generated swipe appended and shown."""
    swipes = [*line.get("swipes", [line.get("mes", "")]), text]
    info = [*line.get("swipe_info", []), {"send_date": _now(), "extra": {}}]
    return {**line, "mes": text, "swipes": swipes, "swipe_id": len(swipes) - 1, "swipe_info": info}


@dataclass(frozen=True)
class StepResult:
    step: Step
    index: int
    chat_title: str
    reply: str


class DemoScriptError(KvtuiError):
    """A step could not be played (the message says why)."""


class DemoPlayer:
    """Plays :data:`SCRIPT` one step at a time against the proxy at ``proxy_url``."""

    def __init__(
        self,
        st_dir: Path,
        proxy_url: str,
        *,
        script: Sequence[Step] = SCRIPT,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
    ) -> None:
        self.st_data = SillyTavernData(st_dir)
        self.proxy_url = proxy_url.rstrip("/")
        self.script = tuple(script)
        self.max_prompt_chars = max_prompt_chars
        self.position = 0

    @property
    def finished(self) -> bool:
        return self.position >= len(self.script)

    @property
    def next_step(self) -> Step | None:
        return None if self.finished else self.script[self.position]

    def _chat(self, chat_id: str) -> ChatRef:
        ref = self.st_data.find_chat(chat_id)
        if ref is None:
            raise DemoScriptError(f"The demo's chat {chat_id!r} is missing from {self.st_data}.")
        return ref

    async def play_next(self) -> StepResult:
        """Play the next step: write Alex's line, generate through the proxy, write the reply."""
        step = self.next_step
        if step is None:
            raise DemoScriptError("The demo script is over.")
        index = self.position
        self.position += 1
        ref = self._chat(step.chat)
        lines = _read_lines(ref.path)
        user = self.st_data.user_name()
        if step.user_text is not None:
            lines.append(user_line(user, step.user_text))
            write_atomic(ref.path, _jsonl(lines))  # saved before the request, as ST does
        members = self.st_data.members(ref)
        member = next((m for m in members if m.name == step.speaker), None)
        if member is None:
            raise DemoScriptError(f"{step.speaker} is not in chat {ref.display_name}.")
        card = self.st_data.card(member.avatar)
        if card is None:
            raise DemoScriptError(f"No character card for {step.speaker}.")
        chat = self.st_data.read_chat(ref)
        history = chat.messages[:-1] if step.turn is Turn.SWIPE else chat.messages
        prompt = assemble_prompt(card, history, user, max_chars=self.max_prompt_chars)
        stop = stop_strings(user, step.speaker, [m.name for m in members], ref.is_group)
        reply = await self._generate(request_body(prompt, stop, self.proxy_url))
        if step.turn is Turn.SWIPE and lines:
            lines[-1] = add_swipe(lines[-1], reply)
        else:
            lines.append(reply_line(step.speaker, member.avatar, reply, ref.is_group))
        write_atomic(ref.path, _jsonl(lines))
        return StepResult(step, index, ref.display_name, reply)

    async def _generate(self, body: dict[str, Any]) -> str:
        """Stream one completion through the proxy; the reply's text."""
        parts: list[str] = []
        timeout = httpx.Timeout(120.0, connect=10.0)
        try:
            async with (
                httpx.AsyncClient(timeout=timeout) as client,
                client.stream("POST", f"{self.proxy_url}/completion", json=body) as response,
            ):
                if response.status_code != 200:
                    detail = (await response.aread()).decode("utf-8", "replace")[:200]
                    raise DemoScriptError(
                        f"The proxy answered HTTP {response.status_code}: {detail}"
                    )
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    if isinstance(event, dict) and isinstance(event.get("content"), str):
                        parts.append(event["content"])
        except httpx.HTTPError as err:
            raise DemoScriptError(f"Could not reach the proxy at {self.proxy_url}: {err}") from err
        return "".join(parts).strip() or "..."


def _read_lines(path: Path) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.strip():
            obj = json.loads(raw)
            if isinstance(obj, dict):
                lines.append(obj)
    return lines


def _jsonl(lines: Sequence[dict[str, Any]]) -> str:
    return "\n".join(json.dumps(line, ensure_ascii=False, separators=(",", ":")) for line in lines)
