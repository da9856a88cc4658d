"""Recall end to end in a real SillyTavern 1.19: ``{{kvtui_memories}}`` in an Author's Note.

One run for the module (``tests/e2e/recall_session.py``): llama-server ← tap ← ``kvtui proxy`` ←
tap ← SillyTavern's server ← its page in headless Chromium. Seraphina's chat has a kvtui memory
book and, set in SillyTavern's own Author's Note panel, the note ``{{kvtui_memories}}`` "In-chat
@ Depth" 0. Text Completion: send, send, swipe, edit + regenerate, delete + regenerate, send; Chat
Completion: send, send, regenerate, edit + regenerate; then a chat with a book but no note, in
both APIs. One Text Completion turn runs with SillyTavern's older macro engine (its "Experimental
Macro Engine" setting, on by default in 1.19, unchecked). The first tap shows what SillyTavern
sent, the second what kvtui forwarded.

Checked: SillyTavern passes the unknown macro through as written, where the note goes; llama-server
receives the memory the user's message names and never the macro; the decision of each turn in
``turns.jsonl`` (computed, reused on swipe/regenerate, recomputed after an edit or a deletion); the
refresh: the next user turn reuses the previous prompt without its recall plus the reply as
SillyTavern wrote it back (llama-server's own ``cache_n``, against ``/tokenize`` of the real
prompts); and without the macro kvtui forwards SillyTavern's bytes with only its routing keys
written in front.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.recall_session import (
    MACRO,
    MEMORIES,
    RecallRun,
    Step,
    is_refresh,
    is_turn,
    recall_stack,
    run_recall_session,
)
from tests.e2e.runner import SLACK_TOKENS, post_json
from tests.e2e.stack import missing_requirements

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
]

USER, CHAR = "Alex", "Seraphina"
#: the memory each step's user message names, and kvtui's decision for it
EXPECTED = {
    "tc_send": ("zeppelin", "computed"),
    "tc_next": ("marzipan", "computed"),
    "tc_swipe": ("marzipan", "reused"),
    "tc_edit": ("obsidian", "recomputed"),
    "tc_delete": ("zeppelin", "recomputed"),
    "tc_after": ("lighthouse", "computed"),
    "tc_legacy": ("waterwheel", "computed"),  # SillyTavern's older macro engine
    "cc_send": ("harp", "computed"),
    "cc_next": ("compass", "computed"),
    "cc_regenerate": ("compass", "reused"),
    "cc_edit": ("lantern", "recomputed"),
}
#: (a turn with recall, the next user turn after its reply)
REFRESHED = [
    ("tc_send", "tc_next"),
    ("tc_delete", "tc_after"),
    ("tc_after", "tc_legacy"),
    ("cc_send", "cc_next"),
]
PLAIN = ("cc_plain", "tc_plain")


@pytest.fixture(scope="module", params=["kept", "refreshed"])
def recall_run(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RecallRun]:
    """The session with kvtui's defaults ("kept": each turn's recall stays in the prompt) and
    with ``recall_keep_in_history = false`` ("refreshed": the slot refreshed after each reply)."""
    kept = request.param == "kept"
    workdir = tmp_path_factory.mktemp(f"st-recall-e2e-{request.param}")
    stack = recall_stack(workdir, kept=kept).start()
    try:
        yield run_recall_session(stack, kept=kept)
    finally:
        stack.stop()
        shutil.rmtree(workdir / "profile", ignore_errors=True)


def _tokens(run: RecallRun, text: str, *, special: bool = True) -> int:
    body = {"content": text, "add_special": special}
    return len(post_json(run.llama_url + "/tokenize", body)["tokens"])


def _render(run: RecallRun, messages: list[dict[str, Any]]) -> str:
    return str(post_json(run.llama_url + "/apply-template", {"messages": messages})["prompt"])


def _user_text(step: Step) -> str:
    return str(next(m["mes"] for m in reversed(step.chat_after) if m["is_user"]))


def _around(a: str, b: str, width: int = 160) -> str:
    """Both texts around their first difference (for a failure message)."""
    n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    lo, hi = max(0, n - width), n + width
    return f"first difference at char {n}:\n  {a[lo:hi]!r}\n  {b[lo:hi]!r}"


def test_every_step_reached_llama_server(recall_run: RecallRun) -> None:
    assert set(recall_run.steps) == {*EXPECTED, *PLAIN}, recall_run.where()
    for step in recall_run.steps.values():
        assert step.st.status == 200 and step.server.status == 200, step.label
        want = "/completion" if step.api == "text" else "/v1/chat/completions"
        assert step.st.path == step.server.path == want, step.label
        assert (step.turn["chat"], step.turn["character"]) == (step.chat, CHAR), step.label


def test_sillytavern_sends_the_macro_as_written_where_the_note_goes(
    recall_run: RecallRun,
) -> None:
    """SillyTavern 1.19's macro engine leaves the unknown macro alone; the note at depth 0 is
    its own line after the last message (Text Completion), a system message after the user's
    message (Chat Completion), on every generation: swipes and regenerates too."""
    for label in EXPECTED:
        step = recall_run.steps[label]
        user = _user_text(step)
        if step.api == "text":
            tail = f"\n{USER}: {user}\n{MACRO}\n{CHAR}:"
            assert step.st_text().endswith(tail), (label, step.st_text()[-300:])
            assert step.st_text().count(MACRO) == 1, label
        else:
            messages = step.st.body["messages"]
            assert messages[-1] == {"role": "system", "content": MACRO}, (label, messages[-3:])
            assert messages[-2] == {"role": "user", "content": user}, (label, messages[-3:])
            assert step.st_text().count(MACRO) == 1, label


def test_llama_server_receives_the_memory_never_the_macro(recall_run: RecallRun) -> None:
    """What kvtui forwarded is what SillyTavern sent with the macro replaced by the memory the
    user's message names (and nothing else changed); the decision log says one memory."""
    wrong = []
    shown: dict[str, set[str]] = {}  # per chat: memories earlier turns injected
    for label, (key, _decision) in EXPECTED.items():
        step = recall_run.steps[label]
        memory = MEMORIES[key]
        sent = step.server_text()
        earlier = shown.setdefault(step.chat, set()) if recall_run.kept else set()
        others = [k for k, text in MEMORIES.items() if k != key and text in sent]
        if MACRO in sent or memory not in sent or set(others) - earlier:
            wrong.append(f"{label}: macro {MACRO in sent}, {key} {memory in sent}, also {others}")
            continue
        # kept in history, earlier turns' recall stays where it was: take it out to compare
        if step.api == "text":
            prompt = str(step.server.body["prompt"])
            for k in others:
                prompt = prompt.replace(MEMORIES[k] + "\n", "", 1)
            assert prompt == step.st.body["prompt"].replace(MACRO, memory), label
            assert prompt.endswith(f"\n{memory}\n{CHAR}:"), label  # this turn's at the macro
        else:
            texts = {MEMORIES[k] for k in others}
            messages = [
                m for m in step.server.body["messages"][:-1]
                if not (m.get("role") == "system" and m.get("content") in texts)
            ]  # fmt: skip
            want = [*step.st.body["messages"][:-1]]
            assert messages == want and step.server.body["messages"][-1] == {
                "role": "system", "content": memory
            }, label  # fmt: skip
        earlier.add(key)
        if not recall_run.kept:
            assert step.recall["memories"] == 1 and step.recall["chars"] == len(memory), label
        routing = {"prompt", "messages", "id_slot", "cache_prompt"}
        rest = {k: v for k, v in step.server.body.items() if k not in routing}
        assert rest == {k: v for k, v in step.st.body.items() if k not in routing}, label
        assert step.server.body["cache_prompt"] is True, label
    assert not wrong, "\n".join(wrong) + "\n" + recall_run.where()


def test_each_turn_computes_reuses_or_recomputes_as_the_table_says(
    recall_run: RecallRun,
) -> None:
    got = {label: recall_run.steps[label].recall.get("decision") for label in EXPECTED}
    want = {label: decision for label, (_key, decision) in EXPECTED.items()}
    assert got == want, recall_run.where()
    reasons = {label: recall_run.steps[label].recall.get("reason", "") for label in EXPECTED}
    assert "edited" in reasons["tc_edit"] and "edited" in reasons["cc_edit"], reasons
    assert "deleted" in reasons["tc_delete"], reasons
    for again, first in (("tc_swipe", "tc_next"), ("cc_regenerate", "cc_next")):
        # the same turn again: what llama-server reads is the same
        a, b = recall_run.steps[again].server.body, recall_run.steps[first].server.body
        assert a.get("prompt", a.get("messages")) == b.get("prompt", b.get("messages")), again


def test_kvtui_refreshes_after_every_reply_with_recall(recall_run: RecallRun) -> None:
    """One background refresh after each recall turn (between it and the next turn), none
    after a turn without the macro."""
    records = recall_run.server_records
    turns = [r for r in records if is_turn(r)]
    refreshes = [r for r in records if is_refresh(r)]
    assert len(turns) == len(recall_run.steps)
    after: dict[int, int] = {}
    for r in refreshes:
        owner = max(t.seq for t in turns if t.seq < r.seq)
        after[owner] = after.get(owner, 0) + 1
    got = {s.label: after.get(s.server.seq, 0) for s in recall_run.steps.values()}
    # kept in history, this turn's recall stays: nothing to refresh (its budget is far from full)
    want = 0 if recall_run.kept else 1
    assert got == {label: want * int(label in EXPECTED) for label in got}, got


def _prompt(run: RecallRun, step: Step, *, sent_by: str = "kvtui") -> str:
    """The text llama-server prefills for a step (a Chat Completion rendered by its template)."""
    body = step.server.body if sent_by == "kvtui" else step.st.body
    if step.api == "text":
        return str(body["prompt"])
    return _render(run, body["messages"])


@pytest.mark.parametrize(("prev_label", "next_label"), REFRESHED)
def test_the_next_turn_reuses_the_prompt_without_recall_plus_the_reply(
    recall_run: RecallRun, prev_label: str, next_label: str
) -> None:
    """The point of ``recall_refresh``: SillyTavern writes the reply back in the next prompt
    exactly as kvtui's refresh guessed, so llama-server reuses the previous prompt without its
    recall plus the reply — well beyond where the previous turn's recall began."""
    prev, nxt = recall_run.steps[prev_label], recall_run.steps[next_label]
    if recall_run.kept:
        _next_turn_keeps_the_whole_previous_prompt(recall_run, prev, nxt)
        return
    assert prev.refresh is not None
    refresh = str(prev.refresh.body["prompt"])
    reply = prev.server.reply_text.strip()  # what the model wrote, trimmed
    written = prev.chat_after[-1]
    assert not written["is_user"] and written["mes"] == reply, (written, reply)
    memory = MEMORIES[EXPECTED[prev_label][0]]
    # kvtui's guess from the previous request: without its recall, the reply appended
    if prev.api == "text":
        without = prev.st.body["prompt"].replace(MACRO + "\n", "")
        assert without == prev.server.body["prompt"].replace(memory + "\n", "")
        guess = f"{without} {reply}"
    else:
        without_msgs = prev.st.body["messages"][:-1]  # the note's system message dropped
        guess = _render(recall_run, [*without_msgs, {"role": "assistant", "content": reply}])
    assert refresh == guess, "kvtui refreshed something else: " + _around(guess, refresh)
    # ... and what SillyTavern really sent next begins with it
    nxt_prompt = _prompt(recall_run, nxt)
    assert nxt_prompt.startswith(refresh), (
        "the next prompt is not what kvtui refreshed: " + _around(refresh, nxt_prompt)
    )
    prev_prompt = _prompt(recall_run, prev)
    held = _tokens(recall_run, refresh)
    before_recall = _tokens(recall_run, prev_prompt[: prev_prompt.index(memory)])
    logged = int(nxt.turn["cache_n"])
    assert nxt.server.timings is not None
    server = int(nxt.server.timings["cache_n"])
    msg = (
        f"{next_label}: cache_n logged {logged}, llama-server {server}; the refreshed prefix "
        f"is {held} tokens, the previous recall began at token {before_recall}, the reply "
        f"{reply!r} "
        f"{recall_run.where()}"
    )
    # the refreshed prefix is the previous prompt up to its recall, then the reply
    assert held >= before_recall + _tokens(recall_run, reply, special=False), msg
    assert logged >= held - SLACK_TOKENS and server >= held - SLACK_TOKENS, msg


def _next_turn_keeps_the_whole_previous_prompt(run: RecallRun, prev: Step, nxt: Step) -> None:
    """Kept in history (the defaults): the next prompt begins with everything the previous
    one was sent — its recall where it was — then the reply as SillyTavern wrote it back, and
    llama-server reuses all of the previous prompt, its recall included. (Not necessarily the
    reply: the slot holds the tokens the model generated, and the tiny model's are not what its
    tokenizer makes of the same text — so without recall too; the refresh rewrites the reply.)"""
    reply = prev.server.reply_text.strip()
    if prev.api == "text":
        held_text = f"{prev.server.body['prompt']} {reply}"
    else:
        held_text = _render(run, [*prev.server.body["messages"], {"role": "assistant",
                                                                  "content": reply}])  # fmt: skip
    nxt_prompt = _prompt(run, nxt)
    assert nxt_prompt.startswith(held_text), "not kept: " + _around(held_text, nxt_prompt)
    held = _tokens(run, _prompt(run, prev))
    logged = int(nxt.turn["cache_n"])
    assert nxt.server.timings is not None
    server = int(nxt.server.timings["cache_n"])
    msg = f"cache_n logged {logged}, llama-server {server}, held {held} {run.where()}"
    assert logged >= held - SLACK_TOKENS and server >= held - SLACK_TOKENS, msg


@pytest.mark.parametrize("label", PLAIN)
def test_without_the_macro_llama_server_receives_what_sillytavern_sent(
    recall_run: RecallRun, label: str
) -> None:
    """A chat whose book has memories for the message but no note: SillyTavern's bytes, with
    only kvtui's routing keys written in front (``id_slot``, and ``cache_prompt`` where
    SillyTavern sent none)."""
    step = recall_run.steps[label]
    sent, got = step.st.raw.lstrip(), step.server.raw
    head = re.match(rb'\{("cache_prompt":true,)?"id_slot":\d+,', got)
    assert head is not None, got[:120]
    assert got[head.end() :] == sent[1:], _around(sent.decode()[1:], got[head.end() :].decode())
    added = got[1 : head.end()].decode()
    assert ("cache_prompt" in added) is ("cache_prompt" not in step.st.body), added
    assert step.turn.get("recall") is None, step.turn.get("recall")
    assert not any(text in step.server_text() for text in MEMORIES.values())
