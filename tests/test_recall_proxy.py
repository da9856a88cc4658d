"""Recall's cache-semantics table end to end: the real proxy, the real llama-server, requests
shaped as SillyTavern 1.19 sends them (``tests/st119.py``), a SillyTavern data directory whose
chat file is written as SillyTavern writes it, and the chat's kvtui memory book in ``worlds/``.

Each row checks what reached llama-server (the memory text in the forwarded prompt, recorded
where the proxy hands it to its upstream client) and the turn's ``recall`` object in
``turns.jsonl`` (computed, recomputed or reused, and why). The Author's Note holding
``{{kvtui_memories}}`` sits at depth 0: its own line after the last message (Text Completion), a
system message after it (Chat Completion).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from kvtui.cli import main
from kvtui.embedded.server import EmbeddedServer
from kvtui.events import Kind
from kvtui.memory.contract import Memory as Written
from kvtui.memory.lorebook import EntrySettings, Lorebook, book_file_name, book_name
from kvtui.memory.settings import MemorySettings
from kvtui.proxy.relay import RelayOutcome, UpstreamRequest
from tests import st119
from tests.st119 import CHAT_B, CHAT_B_MESSAGES, SERA, USER, Msg
from tests.test_proxy import Harness, make_settings, running_proxy, sse_events

pytestmark = pytest.mark.server

MACRO = "{{kvtui_memories}}"
SWORD = "Alex's sword lies by the river."
TEA = "Серафина brews mint tea at dusk."
VILLAGE = "The village of Brookhollow lies east of the grove."
BOOK: list[tuple[str, str, tuple[str, ...]]] = [
    ("Sword", SWORD, ("sword",)),
    ("Tea", TEA, ("tea",)),
    ("Village", VILLAGE, ("village",)),
]
SUMMARIZE = "[Pause your roleplay. Summarize the most important facts and events so far.]"


def tc_prompt(messages: list[Msg], *, note: str | None = MACRO, tail: str = SERA) -> str:
    """SillyTavern's non-instruct prompt with the Author's Note as its own line at depth 0."""
    lines = [f"{s}: {t}\n" for s, t in messages]
    if note is not None:
        lines.append(note + "\n")
    return st119.story(SERA) + "***\n" + "".join(lines).removesuffix("\n") + f"\n{tail}:"


def tc_continue(messages: list[Msg]) -> str:
    """A continue: the Author's Note before the message being continued, no tail."""
    *before, (who, text) = messages
    history = st119.story(SERA) + "***\n" + "".join(f"{s}: {t}\n" for s, t in before)
    return history + f"{MACRO}\n{SERA}:{who}: {text}"


def cc_messages(messages: list[Msg], *, note: bool = True) -> list[dict[str, str]]:
    out = st119.cc_messages(SERA, messages, group=False)
    if note:
        out.append({"role": "system", "content": MACRO})
    return out


@dataclass
class Scene:
    """One SillyTavern 1:1 chat (Серафина, chat B) through the proxy."""

    h: Harness
    user_dir: Path
    sent: list[dict[str, Any]]
    messages: list[Msg] = field(default_factory=lambda: list(CHAT_B_MESSAGES))
    replies: int = 0
    last_reply: str = ""  # what the model wrote in the last Text Completion request

    def save_chat(self) -> None:
        path = self.user_dir / "chats" / SERA / f"{CHAT_B}.jsonl"
        st119.write_chat(path, self.messages, mtime=time.time())

    def reply(self) -> None:
        """The character's reply lands in the chat (scripted, so every run sees the same)."""
        self.replies += 1
        self.messages.append((SERA, f"*She smiles.* Let us rest here a while ({self.replies})."))
        self.save_chat()

    async def tc(self, prompt: str, stop: list[str] | None = None) -> dict[str, Any]:
        """A Text Completion request; what reached llama-server, and the turn's recall."""
        body = st119.tc_body(prompt, stop or [f"\n{USER}:"])
        body.update(n_predict=4, max_tokens=4, max_new_tokens=4)
        return await self._send("/completion", body)

    async def cc(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        body = st119.cc_body(messages)
        body["max_tokens"] = 4
        return await self._send("/v1/chat/completions", body)

    async def _send(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        before = len(self.sent)
        async with self.h.client.stream("POST", path, json=body) as resp:
            raw = b"".join([chunk async for chunk in resp.aiter_raw()])
            assert resp.status_code == 200, raw
        events = sse_events(raw)
        assert events, raw
        self.last_reply = "".join(_piece(e) for e in events)
        await self.h.proxy.app.settled()
        await self.h.proxy.app.extras.ledger.drain()
        await self.h.proxy.app.extras.refresher.drain()
        assert len(self.sent) == before + 1
        return self.sent[-1]

    def recall(self) -> dict[str, Any] | None:
        """The newest turn's ``recall`` object, read back from ``turns.jsonl``."""
        path = self.h.service.settings.state_dir / "turns.jsonl"
        last = json.loads(path.read_text(encoding="utf-8").splitlines()[-1])
        assert (last["chat"], last["character"]) == (CHAT_B, SERA)
        recall: dict[str, Any] | None = last.get("recall")
        return recall

    async def normal(self, text: str) -> dict[str, Any]:
        self.messages.append((USER, text))
        self.save_chat()
        sent = await self.tc(tc_prompt(self.messages))
        self.reply()
        return sent

    async def regenerate(self) -> dict[str, Any]:
        """Regenerate: SillyTavern deletes the last reply and asks again."""
        self.messages.pop()
        self.save_chat()
        sent = await self.tc(tc_prompt(self.messages))
        self.reply()
        return sent


def _piece(event: dict[str, Any]) -> str:
    """The reply text of one streamed event (``/completion`` or an OpenAI chunk)."""
    if "choices" in event:
        choices = event["choices"] or [{}]
        return str((choices[0].get("delta") or {}).get("content") or "")
    return str(event.get("content", ""))


def text_of(sent: dict[str, Any]) -> str:
    if "prompt" in sent:
        return str(sent["prompt"])
    return "\n".join(str(m["content"]) for m in sent["messages"])


def write_book(user_dir: Path, memories: list[tuple[str, str, tuple[str, ...]]]) -> None:
    settings = MemorySettings()
    path = user_dir / "worlds" / book_file_name(book_name(settings.memory_book_name, CHAT_B))
    book = Lorebook.open(path, CHAT_B)
    for i, (title, content, keys) in enumerate(memories):
        book.add_memory(
            Written(title, content, keys), (i, i + 1), EntrySettings.from_memory(settings)
        )


KEEP = {"value": False}


@pytest.fixture(autouse=True, params=[False, True], ids=["plain", "kept-in-history"])
def keep_in_history(request: pytest.FixtureRequest) -> None:
    """Every row holds with ``recall_keep_in_history`` too (it changes only where earlier
    turns' recall stays, never what this turn's is)."""
    KEEP["value"] = bool(request.param)


@asynccontextmanager
async def scene(
    server: EmbeddedServer, tmp_path: Path, *, book: bool = True, **settings: Any
) -> AsyncIterator[Scene]:
    settings.setdefault("recall_keep_in_history", KEEP["value"])
    user_dir = st119.build(tmp_path / "st" / "default-user", now=time.time())
    if book:
        write_book(user_dir, BOOK)
    config = make_settings(server, tmp_path, st_dir=user_dir, autosave_every=100, **settings)
    async with running_proxy(config) as h:
        sent: list[dict[str, Any]] = []

        relay = h.proxy.app.relay
        forward = relay.forward

        async def record(request: UpstreamRequest, *args: Any, **kwargs: Any) -> RelayOutcome:
            """What kvtui hands its upstream client: the bytes llama-server receives."""
            path = urlsplit(request.url).path
            if request.method == "POST" and path.endswith(("/completion", "/chat/completions")):
                sent.append(json.loads(request.body))
            return await forward(request, *args, **kwargs)

        relay.forward = record  # type: ignore[method-assign]
        yield Scene(h, user_dir, sent)


def decision(recall: dict[str, Any] | None) -> str | None:
    return recall.get("decision") if recall else None


# -- Text Completion: every row of the table ----------------------------------------------------


async def test_tc_normal_computes_and_continue_reuses(
    clean_server: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with scene(clean_server, tmp_path) as s:
        sent = await s.normal("Will you lend me your sword for the road?")
        assert SWORD in text_of(sent) and MACRO not in text_of(sent)
        assert TEA not in text_of(sent)
        first = s.recall()
        assert first is not None and decision(first) == "computed"
        assert first["memories"] == 1 and first["chars"] == len(SWORD)
        assert first["tokens"] > 0 and first["position"] == text_of(sent).index(SWORD)
        # continue the reply just written: the same recall, re-sent as it was
        sent = await s.tc(tc_continue(s.messages))
        assert SWORD in text_of(sent)
        again = s.recall()
        assert decision(again) == "reused" and "continue" in again["reason"]  # type: ignore[index]
        events = [e.message for e in s.h.service.events.recent() if e.kind is Kind.ROUTE]
        assert any(m.startswith(f"recall {SERA}: computed") for m in events)
        assert any(m.startswith(f"recall {SERA}: reused") for m in events)
        state_dir = s.h.service.settings.state_dir
    assert main(["stats", "--json", "--state-dir", str(state_dir)]) == 0
    stats = json.loads(capsys.readouterr().out)["recall"]
    assert stats["turns"] == 2 and stats["by_decision"] == {"computed": 1, "reused": 1}
    assert stats["injected_tokens"] == first["tokens"] + again["tokens"]  # type: ignore[index]
    assert main(["stats", "--state-dir", str(state_dir)]) == 0
    assert "recall: 2 turns (1 computed, 1 reused)" in capsys.readouterr().out


async def test_tc_regenerate_and_swipe_with_the_message_unchanged_reuse(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    # without the refresh after each reply (tests/test_recall_refresh.py: it trades the
    # recall's tokens on a swipe for the reply's on the next turn) a reused recall costs nothing
    async with scene(clean_server, tmp_path, recall_refresh=False) as s:
        first = await s.normal("Will you lend me your sword for the road?")
        sent = await s.regenerate()
        assert text_of(sent) == text_of(first)  # the same recall: the cached prompt holds
        assert decision(s.recall()) == "reused"
        # swipe: SillyTavern keeps the reply as a swipe and asks for another
        sent = await s.tc(tc_prompt(s.messages[:-1]))
        assert text_of(sent) == text_of(first)
        recall = s.recall()
        assert decision(recall) == "reused" and recall is not None
        assert recall["cost_tokens"] == 0 and recall["lost_tokens"] == 0


async def test_tc_regenerate_after_an_edit_recomputes(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(clean_server, tmp_path) as s:
        await s.normal("Will you lend me your sword for the road?")
        s.messages.pop()  # regenerate: the reply goes ...
        s.messages[-1] = (USER, "Could I have a cup of tea before we go?")  # ... after an edit
        s.save_chat()
        sent = await s.tc(tc_prompt(s.messages))
        assert TEA in text_of(sent) and SWORD not in text_of(sent)
        recall = s.recall()
        assert decision(recall) == "recomputed" and "edited" in recall["reason"]  # type: ignore[index]


async def test_tc_delete_then_regenerate_recomputes(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(clean_server, tmp_path) as s:
        await s.normal("Will you lend me your sword for the road?")
        await s.normal("Could I have a cup of tea before we go?")
        del s.messages[-2:]  # the user deletes the last exchange ...
        s.messages.pop()  # ... and regenerates the reply to the sword message
        s.save_chat()
        sent = await s.tc(tc_prompt(s.messages))
        assert SWORD in text_of(sent) and TEA not in text_of(sent)
        recall = s.recall()
        assert decision(recall) == "recomputed" and "deleted" in recall["reason"]  # type: ignore[index]


@pytest.mark.parametrize(("policy", "expected"), [("reuse", "reused"), ("recompute", "computed")])
async def test_tc_swipe_follows_the_swipe_setting(
    clean_server: EmbeddedServer, tmp_path: Path, policy: str, expected: str
) -> None:
    async with scene(clean_server, tmp_path, recall_swipe_policy=policy) as s:
        first = await s.normal("Will you lend me your sword for the road?")
        sent = await s.tc(tc_prompt(s.messages[:-1]))  # swipe
        recall = s.recall()
        assert decision(recall) == expected and recall is not None
        assert ("swipe setting" in recall["reason"]) is (policy == "recompute")
        assert SWORD in text_of(sent)  # the only memory that matches, either way
        if policy == "reuse":
            assert text_of(sent) == text_of(first)


async def test_tc_impersonate_never_changes_the_cached_recall(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(clean_server, tmp_path) as s:
        await s.normal("Will you lend me your sword for the road?")
        engine = s.h.proxy.app.extras.recall
        assert engine is not None
        cached = engine.cached(CHAT_B, SERA)
        assert cached is not None
        before = (cached.key, cached.text, cached.round)
        # her reply speaks of tea (a fresh recall would bring TEA); the user has the model
        # write their next line: the cached recall is injected, not replaced
        s.messages[-1] = (SERA, "*She smiles.* First some tea, then the road.")
        s.save_chat()
        sent = await s.tc(tc_prompt(s.messages, tail=USER), stop=[f"\n{SERA}:"])
        assert SWORD in text_of(sent) and TEA not in text_of(sent)
        assert decision(s.recall()) == "reused"
        after = engine.cached(CHAT_B, SERA)
        assert after is not None and (after.key, after.text, after.round) == before
        sent = await s.regenerate()  # and the character's turn still finds it
        assert SWORD in text_of(sent) and decision(s.recall()) == "reused"


async def test_tc_quiet_never_changes_the_cached_recall(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(clean_server, tmp_path) as s:
        await s.normal("Will you lend me your sword for the road?")
        engine = s.h.proxy.app.extras.recall
        assert engine is not None
        cached = engine.cached(CHAT_B, SERA)
        assert cached is not None
        before = (cached.key, cached.text, cached.round)
        # SillyTavern's Summarize: the chat, the note, the quiet prompt, no speaker tail
        prompt = tc_prompt([*s.messages, (USER, "Tea and the village?")], tail=USER)
        quiet = prompt.removesuffix(f"\n{USER}:") + "\n" + SUMMARIZE
        await s.tc(quiet)
        after = engine.cached(CHAT_B, SERA)
        assert after is not None and (after.key, after.text, after.round) == before
        sent = await s.regenerate()
        assert SWORD in text_of(sent) and TEA not in text_of(sent)
        assert decision(s.recall()) == "reused"


async def test_tc_quiet_gets_the_cached_recall_injected(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(clean_server, tmp_path) as s:
        await s.normal("Will you lend me your sword for the road?")
        quiet = tc_prompt(s.messages, tail=USER).removesuffix(f"\n{USER}:") + "\n" + SUMMARIZE
        sent = await s.tc(quiet)
        assert MACRO not in text_of(sent) and SWORD in text_of(sent)


async def test_an_edit_reported_by_the_extension_makes_regenerate_recompute(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(clean_server, tmp_path) as s:
        first = await s.normal("Will you lend me your sword for the road?")
        event = {"type": "message_edited", "chat": CHAT_B, "character": SERA, "message_index": 4}
        page = {"Origin": "http://127.0.0.1:8000", "Content-Type": "text/plain;charset=UTF-8"}
        resp = await s.h.client.post("/kvtui/v1/event", content=json.dumps(event), headers=page)
        assert resp.status_code == 204
        sent = await s.regenerate()  # the prompt reads the same: only the event says otherwise
        recall = s.recall()
        assert decision(recall) == "recomputed" and recall is not None
        assert "reported by the extension" in recall["reason"]
        assert text_of(sent) == text_of(first)  # recomputed from the same messages: the same
        sent = await s.regenerate()
        assert decision(s.recall()) == "reused"  # and once recomputed it is cached again


# -- Chat Completion: normal, regenerate, edit --------------------------------------------------


async def test_cc_normal_regenerate_edit(clean_server: EmbeddedServer, tmp_path: Path) -> None:
    async with scene(clean_server, tmp_path) as s:
        s.messages.append((USER, "Will you lend me your sword for the road?"))
        s.save_chat()
        first = await s.cc(cc_messages(s.messages))
        assert SWORD in text_of(first) and MACRO not in text_of(first)
        assert first["messages"][-1] == {"role": "system", "content": SWORD}
        assert decision(s.recall()) == "computed"
        s.reply()
        s.messages.pop()  # regenerate
        s.save_chat()
        sent = await s.cc(cc_messages(s.messages))
        assert sent["messages"] == first["messages"]
        assert decision(s.recall()) == "reused"
        s.messages[-1] = (USER, "Could I have a cup of tea before we go?")  # edit, regenerate
        s.save_chat()
        sent = await s.cc(cc_messages(s.messages))
        assert sent["messages"][-1] == {"role": "system", "content": TEA}
        recall = s.recall()
        assert decision(recall) == "recomputed" and "edited" in recall["reason"]  # type: ignore[index]


# -- Nothing leaks; malformed or empty leaves the prompt as written ---------------------------


async def test_without_the_macro_nothing_is_injected_even_with_a_cached_recall(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(clean_server, tmp_path) as s:
        await s.normal("Will you lend me your sword for the road?")  # a recall is cached
        s.messages.append((USER, "And the sword, is it sharp?"))
        s.save_chat()
        prompt = tc_prompt(s.messages, note=None)
        sent = await s.tc(prompt)
        assert sent["prompt"] == prompt and SWORD not in sent["prompt"]
        assert s.recall() is None
        body = st119.cc_body(cc_messages(s.messages, note=False))
        cc = await s.cc(body["messages"])
        assert cc["messages"] == body["messages"]


async def test_the_macro_in_any_case_and_with_spaces_is_replaced(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(clean_server, tmp_path) as s:
        s.messages.append((USER, "Will you lend me your sword for the road?"))
        s.save_chat()
        sent = await s.tc(tc_prompt(s.messages, note="{{ KVTUI_Memories }}"))
        assert SWORD in sent["prompt"] and "KVTUI" not in sent["prompt"]
        assert decision(s.recall()) == "computed"


@pytest.mark.parametrize("bad", ["{{kvtui_memories}", "{kvtui_memories}}", "{{{kvtui_memories}}}"])
async def test_a_malformed_macro_leaves_the_prompt_byte_identical(
    clean_server: EmbeddedServer, tmp_path: Path, bad: str
) -> None:
    async with scene(clean_server, tmp_path) as s:
        s.messages.append((USER, "Will you lend me your sword for the road?"))
        s.save_chat()
        prompt = tc_prompt(s.messages, note=bad)
        sent = await s.tc(prompt)
        assert sent["prompt"] == prompt
        recall = s.recall()
        assert recall is not None and recall["macro"] == "malformed"
        events = [e.message for e in s.h.service.events.recent() if e.kind is Kind.ROUTE]
        assert any("malformed recall macro" in m and bad in m for m in events)


@pytest.mark.parametrize("book", [False, True])
async def test_an_empty_recall_is_the_prompt_without_the_macro(
    clean_server: EmbeddedServer, tmp_path: Path, book: bool
) -> None:
    """No book at all, or a book none of whose keywords the last messages hold."""
    async with scene(clean_server, tmp_path, book=book) as s:
        s.messages.append((USER, "Tell me about the stars above the glade."))
        s.save_chat()
        sent = await s.tc(tc_prompt(s.messages))
        assert sent["prompt"] == tc_prompt(s.messages, note=None)
        recall = s.recall()
        assert decision(recall) == "computed" and recall is not None
        assert recall["chars"] == 0 and recall["memories"] == 0
