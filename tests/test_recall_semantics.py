"""Recall's cache semantics, row by row, on requests shaped as SillyTavern 1.19 sends them.

Text completion (llama.cpp API type, non-instruct): the prompt is the story string, ``***``, one
``Name: message`` line each, then ``Seraphina:``; ``stop`` holds ``\\nAlex:``; the Author's Note
sits as its own line ``depth`` messages from the end. Continue is the last prompt plus the message
re-rendered with its name and no tail; impersonation ends ``\\nAlex:`` with the character's name in
``stop``. Chat completion (Custom source): system prompts, then ``assistant``/``user`` messages,
the Author's Note as a system message at its depth, no ``stop`` and no ``name``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from kvtui.recall import Decision, RecallEngine, RecallSettings, StaticSource, SwipePolicy
from kvtui.recall.memories import Memory
from kvtui.slots import GenType

CHAT = "Seraphina - 2026-12-01@21h00m00s"
CHAR = "Seraphina"
USER = "Alex"
STORY = (
    "Write Seraphina's next reply in a fictional chat between Seraphina and Alex.\n"
    "Seraphina is a guardian spirit of the Eldoria forest. She heals travellers and speaks "
    "softly.\nScenario: Alex wakes up in Seraphina's glade after an attack by shadow beasts.\n"
)
MEMORIES = [
    Memory(
        "kvtui - chat.json#0", 0, "[001] - Glade", "Alex woke in the glade, healed.", ("glade",)
    ),
    Memory(
        "kvtui - chat.json#1", 1, "[002] - Sword", "Alex's sword lies by the river.", ("sword",)
    ),
    Memory("kvtui - chat.json#2", 2, "[003] - Tea", "Seraphina brews mint tea at dusk.", ("tea",)),
    Memory("kvtui - chat.json#3", 3, "[004] - Wolves", "Shadow wolves hunt at night.", ("wolves",)),
]
GREETING = "You are awake at last. You are safe here."

Chat = list[tuple[str, str]]


def tc_prompt(
    chat: Chat, *, note: str | None = "{{kvtui_memories}}", depth: int = 1, tail: str = CHAR
) -> str:
    lines = [f"{name}: {text}" for name, text in chat]
    if note is not None:
        lines.insert(max(len(lines) - depth, 0), note)
    return STORY + "***\n" + "\n".join(lines) + f"\n{tail}:"


def tc_body(prompt: str, *, stop: list[str] | None = None) -> dict[str, Any]:
    """The body SillyTavern 1.19 sends for the llama.cpp text-completion type (trimmed)."""
    return {
        "prompt": prompt,
        "model": "",
        "max_new_tokens": 300,
        "max_tokens": 300,
        "temperature": 0.7,
        "top_p": 0.5,
        "top_k": 40,
        "min_p": 0,
        "repetition_penalty": 1.2,
        "stopping_strings": stop or [f"\n{USER}:"],
        "stop": stop or [f"\n{USER}:"],
        "truncation_length": 8192,
        "ban_eos_token": False,
        "skip_special_tokens": True,
        "api_type": "llamacpp",
        "api_server": "http://127.0.0.1:8081",
        "n": 1,
        "n_predict": 300,
        "grammar": "",
        "cache_prompt": True,
        "dry_sequence_breakers": ["\n", ":", '"', "*"],
        "stream": True,
    }


def cc_body(
    chat: Chat, *, note: str | None = "{{kvtui_memories}}", depth: int = 1
) -> dict[str, Any]:
    """The body SillyTavern 1.19's Custom (OpenAI-compatible) source sends: no stop, no names."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": STORY},
        {"role": "system", "content": "[Start a new Chat]"},
    ]
    history = [
        {"role": "user" if name == USER else "assistant", "content": text} for name, text in chat
    ]
    if note is not None:
        history.insert(max(len(history) - depth, 0), {"role": "system", "content": note})
    return {
        "messages": messages + history,
        "model": "tiny",
        "temperature": 1,
        "max_tokens": 300,
        "stream": True,
        "presence_penalty": 0,
        "frequency_penalty": 0,
        "top_p": 1,
    }


def engine(tmp_path: Path | None = None, **settings: Any) -> RecallEngine:
    """The table's engine: each turn's recall alone in the prompt (``keep_in_history`` leaves
    out of a new recall what the prompt shows already: tests/test_recall_pins.py)."""
    settings.setdefault("keep_in_history", False)
    return RecallEngine(
        RecallSettings(**settings),
        StaticSource({CHAT: MEMORIES}),
        state_path=tmp_path / "recall.json" if tmp_path else None,
    )


def apply(eng: RecallEngine, body: dict[str, Any], gen: GenType, **kw: Any) -> Any:
    return eng.apply(body, chat=CHAT, character=CHAR, gen_type=gen, **kw)


TURN1: Chat = [(CHAR, GREETING), (USER, "Where is my sword?")]
TURN1_REPLY = "By the river, where you fell."
TURN2: Chat = [*TURN1, (CHAR, TURN1_REPLY), (USER, "Could I have some tea first?")]


# -- text completion -----------------------------------------------------------------------


def test_normal_computes_and_injects_the_matching_memory() -> None:
    eng = engine()
    out = apply(eng, tc_body(tc_prompt(TURN1)), GenType.NORMAL)
    t = out.telemetry
    assert (t.decision, t.memory_ids) == (Decision.COMPUTED, ("kvtui - chat.json#1",))
    assert (
        "Alex's sword lies by the river.\nAlex: Where is my sword?\nSeraphina:"
        in out.body["prompt"]
    )
    assert "{{kvtui_memories}}" not in out.body["prompt"]
    assert t.chars == len("Alex's sword lies by the river.")
    assert out.body["prompt"][t.position :].startswith("Alex's sword")
    assert t.chars_after == len("\nAlex: Where is my sword?\nSeraphina:")
    # the next user message is a new round with a new recall
    out2 = apply(eng, tc_body(tc_prompt(TURN2)), GenType.NORMAL)
    assert out2.telemetry.decision is Decision.COMPUTED
    assert out2.telemetry.reason == "a new user message"
    assert out2.telemetry.memory_ids == ("kvtui - chat.json#2",)
    assert out2.telemetry.changed is True


def test_continue_reuses() -> None:
    eng = engine()
    first = apply(eng, tc_body(tc_prompt(TURN1)), GenType.NORMAL)
    # 1.19's continue: the last prompt plus the message re-rendered with its name, no tail
    prompt = tc_prompt(TURN1) + f"{CHAR}: By the river"
    out = apply(eng, tc_body(prompt), GenType.CONTINUE)
    assert out.telemetry.decision is Decision.REUSED
    assert out.telemetry.memory_ids == first.telemetry.memory_ids
    assert out.telemetry.changed is False


@pytest.mark.parametrize("gen", [GenType.REGENERATE, GenType.SWIPE, GenType.NORMAL])
def test_regenerate_or_swipe_with_the_message_unchanged_reuses(gen: GenType) -> None:
    """NORMAL too: kvtui's wire classifier may call a repeat "normal"; the key decides."""
    eng = engine()
    first = apply(eng, tc_body(tc_prompt(TURN1)), GenType.NORMAL)
    # memories written in between must not change a regenerate's recall
    eng.source = StaticSource({CHAT: [*MEMORIES, Memory("x#9", 9, "", "Sword song.", ("sword",))]})
    again = apply(eng, tc_body(tc_prompt(TURN1)), gen)
    assert again.telemetry.decision is Decision.REUSED
    assert again.body == first.body


@pytest.mark.parametrize("gen", [GenType.REGENERATE, GenType.SWIPE, GenType.NORMAL])
def test_regenerate_after_the_user_edited_the_message_recomputes(gen: GenType) -> None:
    """As the extension declares it (regenerate/swipe), or as the wire classifier sees it."""
    edited: Chat = [(CHAR, GREETING), (USER, "Are there wolves here?")]
    eng = engine()
    apply(eng, tc_body(tc_prompt(TURN1)), GenType.NORMAL)
    out = apply(eng, tc_body(tc_prompt(edited)), gen)
    assert out.telemetry.decision is Decision.RECOMPUTED
    assert out.telemetry.reason == "the user's last message changed (edited)"
    assert out.telemetry.memory_ids == ("kvtui - chat.json#3",)
    assert "Shadow wolves hunt at night.\nAlex: Are there wolves here?" in out.body["prompt"]
    # the redone round started from the same sticky records: as if the edit had been sent first
    first_send = engine()
    direct = apply(first_send, tc_body(tc_prompt(edited)), GenType.NORMAL)
    assert out.body == direct.body
    assert eng.cached(CHAT, CHAR) == first_send.cached(CHAT, CHAR)


def test_delete_then_regenerate_recomputes() -> None:
    eng = engine()
    apply(eng, tc_body(tc_prompt(TURN1)), GenType.NORMAL)
    apply(eng, tc_body(tc_prompt(TURN2)), GenType.NORMAL)
    # the user deletes their tea message and the reply; regenerate goes back to turn 1
    out = apply(eng, tc_body(tc_prompt(TURN1)), GenType.REGENERATE)
    assert out.telemetry.decision is Decision.RECOMPUTED
    assert out.telemetry.reason == "the chat is shorter (messages were deleted)"
    assert out.telemetry.memory_ids == ("kvtui - chat.json#1",)
    # deleting the greeting (a message above the user's) also shortens the chat
    eng2 = engine()
    apply(eng2, tc_body(tc_prompt(TURN2)), GenType.NORMAL)
    out2 = apply(eng2, tc_body(tc_prompt(TURN2[1:])), GenType.REGENERATE)
    assert out2.telemetry.decision is Decision.RECOMPUTED


def test_swipe_policy_recompute() -> None:
    eng = engine(swipe_policy=SwipePolicy.RECOMPUTE)
    apply(eng, tc_body(tc_prompt(TURN1)), GenType.NORMAL)
    out = apply(eng, tc_body(tc_prompt(TURN1)), GenType.SWIPE)
    assert out.telemetry.decision is Decision.COMPUTED
    assert out.telemetry.reason == "swipe, recomputed by the swipe setting"
    # a regenerate still reuses under that policy
    assert apply(eng, tc_body(tc_prompt(TURN1)), GenType.REGENERATE).telemetry.decision is (
        Decision.REUSED
    )


def test_impersonate_and_quiet_never_change_the_cached_recall() -> None:
    eng = engine()
    first = apply(eng, tc_body(tc_prompt(TURN1)), GenType.NORMAL)
    before = eng.cached(CHAT, CHAR)
    assert before is not None
    snapshot = before.to_json()
    wolves: Chat = [*TURN1, (CHAR, TURN1_REPLY)]
    # impersonation: the tail asks Alex, Seraphina moves into stop; the chat mentions wolves
    imp = tc_prompt([*wolves[:-1], (CHAR, "Beware the wolves.")], tail=USER)
    out = apply(eng, tc_body(imp, stop=[f"\n{CHAR}:"]), GenType.IMPERSONATE)
    assert out.telemetry.decision is Decision.REUSED
    assert out.telemetry.memory_ids == first.telemetry.memory_ids
    quiet = tc_prompt(wolves) + "\n[Pause your roleplay. Summarize the wolves.]"
    assert apply(eng, tc_body(quiet), GenType.QUIET).telemetry.decision is Decision.REUSED
    after = eng.cached(CHAT, CHAR)
    assert after is not None and after.to_json()["sticky"] == snapshot["sticky"]
    assert (after.key, after.ids, after.round) == (before.key, before.ids, before.round)
    # the next regenerate still reuses the turn's recall
    assert apply(eng, tc_body(tc_prompt(TURN1)), GenType.REGENERATE).body == first.body


def test_quiet_without_a_cached_recall_is_computed_but_not_kept() -> None:
    eng = engine()
    out = apply(eng, tc_body(tc_prompt(TURN1)), GenType.QUIET)
    assert out.telemetry.decision is Decision.TRANSIENT
    assert out.telemetry.memory_ids == ("kvtui - chat.json#1",)
    assert eng.cached(CHAT, CHAR) is None


def test_extension_user_message_key_wins() -> None:
    eng = engine()
    ext = {"chat": CHAT, "character": CHAR, "type": "normal", "source": "extension", "version": 1}
    key1 = {**ext, "user_message": {"index": 1, "hash": "aaa"}}
    apply(eng, tc_body(tc_prompt(TURN1)), GenType.NORMAL, client=key1)
    same = apply(eng, tc_body(tc_prompt(TURN1)), GenType.REGENERATE, client=key1)
    assert (same.telemetry.decision, same.telemetry.key_source) == (Decision.REUSED, "extension")
    edited = {**ext, "user_message": {"index": 1, "hash": "bbb"}}
    out = apply(eng, tc_body(tc_prompt(TURN1)), GenType.REGENERATE, client=edited)
    assert out.telemetry.decision is Decision.RECOMPUTED


def test_reported_edit_makes_the_next_regenerate_recompute() -> None:
    eng = engine()
    apply(eng, tc_body(tc_prompt(TURN2)), GenType.NORMAL)
    eng.note_event(CHAT, "message_edited")
    out = apply(eng, tc_body(tc_prompt(TURN2)), GenType.REGENERATE)
    assert out.telemetry.decision is Decision.RECOMPUTED
    assert "reported by the extension" in out.telemetry.reason
    assert apply(eng, tc_body(tc_prompt(TURN2)), GenType.SWIPE).telemetry.decision is (
        Decision.REUSED
    )


def test_full_context_next_turn_is_a_new_round() -> None:
    """Old messages trimmed off the top keep the count, but the previous user message is the
    cached turn's, so it is the next turn (a new round), not an edit."""
    eng = engine()
    apply(eng, tc_body(tc_prompt(TURN2)), GenType.NORMAL)  # 4 messages, last: the tea question
    trimmed: Chat = [*TURN2[2:], (CHAR, "Here you are."), (USER, "Wolves at night?")]
    assert len(trimmed) == len(TURN2)
    out = apply(eng, tc_body(tc_prompt(trimmed)), GenType.NORMAL)
    assert (out.telemetry.decision, out.telemetry.reason) == (
        Decision.COMPUTED,
        "a new user message",
    )
    cached = eng.cached(CHAT, CHAR)
    assert cached is not None and cached.round == 2


# -- chat completion -----------------------------------------------------------------------


def test_chat_completion_normal_regenerate_edit() -> None:
    eng = engine()
    first = apply(eng, cc_body(TURN1), GenType.NORMAL)
    assert first.telemetry.decision is Decision.COMPUTED
    note = [m for m in first.body["messages"] if m["role"] == "system"][-1]
    assert note["content"] == "Alex's sword lies by the river."
    regen = apply(eng, cc_body(TURN1), GenType.REGENERATE)
    assert (regen.telemetry.decision, regen.body) == (Decision.REUSED, first.body)
    edited = apply(eng, cc_body([(CHAR, GREETING), (USER, "Any tea?")]), GenType.REGENERATE)
    assert edited.telemetry.decision is Decision.RECOMPUTED
    assert edited.telemetry.memory_ids == ("kvtui - chat.json#2",)
    nxt = apply(eng, cc_body([*TURN1, (CHAR, TURN1_REPLY), (USER, "Wolves?")]), GenType.NORMAL)
    assert (nxt.telemetry.decision, nxt.telemetry.memory_ids) == (
        Decision.COMPUTED,
        ("kvtui - chat.json#3",),
    )


def test_chat_completion_content_parts() -> None:
    eng = engine()
    body = cc_body(TURN1, note=None)
    body["messages"][-1] = {
        "role": "user",
        "content": [{"type": "text", "text": "Where is my sword?\n{{kvtui_memories}}"}],
    }
    out = apply(eng, body, GenType.NORMAL)
    part = out.body["messages"][-1]["content"][0]
    assert part == {"type": "text", "text": "Where is my sword?\nAlex's sword lies by the river."}
    assert body["messages"][-1]["content"][0]["text"].endswith("{{kvtui_memories}}")  # untouched


# -- no leaks, byte identity, determinism, persistence -------------------------------------


def test_no_macro_no_change_even_with_a_cached_recall() -> None:
    eng = engine()
    apply(eng, tc_body(tc_prompt(TURN1)), GenType.NORMAL)
    state = json.dumps(eng.state.to_json(), sort_keys=True)
    for body in (tc_body(tc_prompt(TURN2, note=None)), cc_body(TURN2, note=None)):
        raw = json.dumps(body)
        out = apply(eng, body, GenType.NORMAL)
        assert out.body is body and json.dumps(out.body) == raw
        assert out.telemetry.macro == "none" and out.telemetry.decision is None
    assert json.dumps(eng.state.to_json(), sort_keys=True) == state


@pytest.mark.parametrize(
    "bad", ["{{kvtui_memories}", "{kvtui_memories}}", "{{{kvtui_memories}}}", "{{kvtui_memory}}"]
)
def test_malformed_macro_is_byte_identical(bad: str) -> None:
    eng = engine()
    for body in (tc_body(tc_prompt(TURN1, note=bad)), cc_body(TURN1, note=bad)):
        raw = json.dumps(body, ensure_ascii=False)
        out = apply(eng, body, GenType.NORMAL)
        assert json.dumps(out.body, ensure_ascii=False) == raw
        assert out.telemetry.decision is None
        assert out.telemetry.macro == ("none" if bad == "{{kvtui_memory}}" else "malformed")
    assert eng.cached(CHAT, CHAR) is None


def test_spaces_and_case_inside_the_braces_are_the_macro() -> None:
    out = apply(engine(), tc_body(tc_prompt(TURN1, note="{{ KVTUI_Memories }}")), GenType.NORMAL)
    assert "Alex's sword lies by the river.\nAlex:" in out.body["prompt"]


@pytest.mark.parametrize("shape", ["tc", "cc"])
def test_empty_recall_is_byte_identical_to_the_request_without_the_macro(shape: str) -> None:
    eng = RecallEngine(RecallSettings(), StaticSource({}))
    chat: Chat = [(CHAR, GREETING), (USER, "Hello there.")]
    if shape == "tc":
        with_macro, without = tc_body(tc_prompt(chat)), tc_body(tc_prompt(chat, note=None))
    else:
        with_macro, without = cc_body(chat), cc_body(chat, note=None)
    out = apply(eng, with_macro, GenType.NORMAL)
    assert json.dumps(out.body, ensure_ascii=False) == json.dumps(without, ensure_ascii=False)
    assert (out.telemetry.decision, out.telemetry.chars) == (Decision.COMPUTED, 0)


def test_deterministic_for_the_same_inputs(tmp_path: Path) -> None:
    turns = [TURN1, TURN2, [*TURN2, (CHAR, "Here."), (USER, "The sword and the tea, wolves?")]]

    def run(directory: Path | None) -> list[str]:
        eng = engine(directory, top_k=2)
        out = []
        for chat in turns:
            for gen in (GenType.NORMAL, GenType.SWIPE):
                result = apply(eng, tc_body(tc_prompt(chat)), gen)
                out.append(json.dumps([result.body, result.telemetry.to_json()], sort_keys=True))
        return out

    (tmp_path / "a").mkdir()
    assert run(None) == run(None) == run(tmp_path / "a")


def test_state_survives_a_restart(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    first = apply(eng, tc_body(tc_prompt(TURN1)), GenType.NORMAL)
    again = engine(tmp_path)
    out = apply(again, tc_body(tc_prompt(TURN1)), GenType.SWIPE)
    assert (out.telemetry.decision, out.body) == (Decision.REUSED, first.body)


def test_damaged_state_file_is_set_aside(tmp_path: Path) -> None:
    (tmp_path / "recall.json").write_text("{not json", encoding="utf-8")
    eng = engine(tmp_path)
    assert eng.error is not None and "set aside" in eng.error
    assert (tmp_path / "recall.json.bad").read_text(encoding="utf-8") == "{not json"
    assert apply(eng, tc_body(tc_prompt(TURN1)), GenType.NORMAL).telemetry.decision is (
        Decision.COMPUTED
    )


def test_body_is_never_mutated() -> None:
    body = tc_body(tc_prompt(TURN1))
    kept = copy.deepcopy(body)
    apply(engine(), body, GenType.NORMAL)
    assert body == kept


def test_a_reused_recall_does_not_rewrite_the_state_file(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    apply(eng, tc_body(tc_prompt(TURN1)), GenType.NORMAL)
    path = tmp_path / "recall.json"
    inode = path.stat().st_ino
    apply(eng, tc_body(tc_prompt(TURN1)), GenType.SWIPE)
    assert path.stat().st_ino == inode  # an atomic write would have replaced the file
    apply(eng, tc_body(tc_prompt(TURN2)), GenType.NORMAL)
    assert path.stat().st_ino != inode


# -- as the proxy sees it: types from kvtui's wire classifier, no extension -----------------


def test_every_row_with_the_wire_classifier() -> None:
    """Without the companion extension the proxy's classifier gives the type: a regenerate
    looks like a swipe, an edit or a delete like a normal turn. The key still gets each row of
    the table right (the router's order: classify the client's body, then inject)."""
    from kvtui.proxy.gentype import TurnMemory, classify_request, remember

    eng = engine()
    previous: TurnMemory | None = None

    def send(body: dict[str, Any], reply: str = "") -> tuple[GenType, Decision | None, str]:
        nonlocal previous
        result = classify_request(body, previous, character=CHAR, user_name=USER)
        assert result is not None
        out = apply(eng, body, result.gen_type, user_name=USER)
        previous = remember(previous, result, body["prompt"], reply)
        return result.gen_type, out.telemetry.decision, out.telemetry.reason

    assert send(tc_body(tc_prompt(TURN1)), TURN1_REPLY)[:2] == (GenType.NORMAL, Decision.COMPUTED)
    cont = tc_body(tc_prompt(TURN1) + f"{CHAR}: {TURN1_REPLY}")
    assert send(cont, TURN1_REPLY + " More.")[:2] == (GenType.CONTINUE, Decision.REUSED)
    assert send(tc_body(tc_prompt(TURN1)), TURN1_REPLY)[:2] == (GenType.SWIPE, Decision.REUSED)
    edited: Chat = [(CHAR, GREETING), (USER, "Are there wolves here?")]
    gen, decision, reason = send(tc_body(tc_prompt(edited)), "Yes.")
    assert (gen, decision, reason) == (
        GenType.NORMAL,
        Decision.RECOMPUTED,
        "the user's last message changed (edited)",
    )
    longer: Chat = [*edited, (CHAR, "Yes."), (USER, "And tea?")]
    assert send(tc_body(tc_prompt(longer)), "Sure.")[:2] == (GenType.NORMAL, Decision.COMPUTED)
    imp = tc_body(tc_prompt([*longer, (CHAR, "Sure.")], tail=USER), stop=[f"\n{CHAR}:"])
    assert send(imp)[:2] == (GenType.IMPERSONATE, Decision.REUSED)
    gen, decision, reason = send(tc_body(tc_prompt(edited)), "Yes again.")  # deleted 2 messages
    assert (decision, reason) == (
        Decision.RECOMPUTED,
        "the chat is shorter (messages were deleted)",
    )
