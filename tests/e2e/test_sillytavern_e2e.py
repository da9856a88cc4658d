"""End to end in a real SillyTavern 1.19: every generation's chat, character, type and cache.

One run per variant (``run`` in ``tests/e2e/conftest.py``; "plain": no extension, kvtui decides
from evidence; "extension": kvtui's companion extension installed): llama-server (2 slots) ←
``kvtui proxy`` ← recording tap ← SillyTavern's server ← SillyTavern's page in headless Chromium,
clicked through the scripted session of ``tests/e2e/session.py`` (Text Completion one-to-one with
send, swipe, continue, edit + regenerate, impersonate; an existing chat opened from the list and
swiped first; the group with a muted member, swiped first after opening; Chat Completion
one-to-one, the group swiped first and a round; llama-server restarted, then a group round).

Assertions, per generation:
- it reached kvtui and llama-server answered (the tap);
- with the extension, its ``kvtui`` object arrived with the right chat, character, group and type
  (Text Completion in the body; Chat Completion through ``custom_include_body``);
- kvtui's decision log ``<state_dir>/turns.jsonl`` (contracts.md) has one line for it with the
  right chat, character and ``gen_type`` (and, with the extension, ``source`` extension/explicit);
- its ``cache_n`` covers the previous prompt of the same chat and character: at least the tokens of
  the two prompts' common prefix (minus a few tokens for tokenisation at the boundary) were reused,
  both in kvtui's log and in llama-server's own final ``timings`` seen at the tap; after the
  restart, what the save kvtui restored shares with the prompt (or kvtui had none and said so).

And for every save kvtui wrote: restored into the real server after the session, one of its own
chat and character's requests reuses all of it but the reply (``tests/e2e/probe.py``).
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.probe import MARGIN
from tests.e2e.runner import SLACK_TOKENS, Gen, Run
from tests.e2e.stack import missing_requirements

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
]


def test_every_generation_reached_kvtui_and_was_answered(run: Run) -> None:
    bad = [f"{g.label()}: HTTP {g.status}" for g in run.gens if g.status != 200]
    assert not bad, "\n".join(bad) + "\n" + run.where()
    for g in run.gens:
        assert g.path == ("/completion" if g.expected.api == "text" else "/v1/chat/completions")


def test_the_extension_identity_reaches_kvtui(run: Run) -> None:
    if run.variant != "extension":
        assert all("kvtui" not in g.body for g in run.gens), "a kvtui object without extension"
        return
    wrong = []
    for g in run.gens:
        got = g.body.get("kvtui")
        e = g.expected
        want = {"chat": e.chat, "character": e.character, "group": e.group, "type": e.type,
                "source": "extension", "version": 1}  # fmt: skip
        if not isinstance(got, dict):
            wrong.append(f"{g.label()}: no kvtui object in the body")
            continue
        diff = {k: got.get(k) for k, v in want.items() if got.get(k) != v}
        if diff:
            wrong.append(f"{g.label()}: {diff}")
        user = got.get("user_message")
        assert user is None or (isinstance(user["index"], int) and len(user["hash"]) == 64)
    assert not wrong, "\n".join(wrong)


def test_the_extension_reports_every_chat_open_before_its_requests(run: Run) -> None:
    opened = [e["chat"] for _, e in run.events if e.get("type") == "chat_opened"]
    if run.variant != "extension":
        assert opened == []
        return
    assert opened == run.opens
    # Every generation request arrived after the chat_opened event of its own chat.
    late = []
    for g in run.gens:
        before = [e for seq, e in run.events if seq < g.seq and e.get("type") == "chat_opened"]
        if not before or before[-1]["chat"] != g.expected.chat:
            late.append(f"{g.label()}: last chat_opened {before[-1]['chat'] if before else None}")
    assert not late, "\n".join(late)
    swiped = [e for _, e in run.events if e.get("type") == "message_swiped"]
    assert len(swiped) == sum(1 for g in run.gens if g.expected.type == "swipe")
    edited = [e for _, e in run.events if e.get("type") == "message_edited"]
    assert [e["message_index"] for e in edited] == [6]  # the user message the session edits


def test_kvtui_logs_one_decision_per_generation(run: Run) -> None:
    assert len(run.turns) == len(run.gens), (
        f"turns.jsonl has {len(run.turns)} lines for {len(run.gens)} routed generations "
        f"{run.where()}"
    )


def test_kvtui_decides_chat_character_and_type(run: Run) -> None:
    if len(run.turns) != len(run.gens):
        pytest.fail(f"turns.jsonl has {len(run.turns)} lines for {len(run.gens)} generations")
    wrong = []
    for g, turn in zip(run.gens, run.turns, strict=True):
        e = g.expected
        diff = {}
        # SillyTavern calls it "regenerate"; once the user's message was edited, kvtui counts
        # it as a new turn (the seed's rule: an edited message is a new message). Without the
        # extension it is told apart from a plain send only by that edit, so it is "normal".
        want_type = e.type
        if e.scenario.endswith("edit_regenerate") and run.variant == "plain":
            want_type = "normal"
        for field, want in (("chat", e.chat), ("character", e.character), ("gen_type", want_type)):
            if turn.get(field) != want:
                diff[field] = (turn.get(field), want)
        if run.variant == "extension" and turn.get("source") not in ("extension", "explicit"):
            diff["source"] = (turn.get("source"), "extension")
        if diff:
            wrong.append(f"{g.label()}: got/want {diff}")
    assert not wrong, f"{len(wrong)} of {len(run.gens)} wrong:\n" + "\n".join(wrong)


def _after_restart(run: Run, g: Gen) -> bool:
    """The character's first turn after llama-server restarted (its earlier cache is gone)."""
    prev = run.gens[g.previous] if g.previous is not None else None
    return g.expected.phase == "restart" and prev is not None and prev.expected.phase != "restart"


def _restart_failure(run: Run, g: Gen, cached: int | None) -> str | None:
    """After a restart only kvtui's saves on disk are left: the turn restored one and reused
    what that save's prompt shares with this one, or kvtui said the cache was lost to the
    restart (it had no save of this chat and character)."""
    if len(run.turns) != len(run.gens):
        return f"{g.label()}: no decision logged"
    turn = run.turns[g.n]
    restored = turn.get("restored")
    if restored is None:
        ok = turn.get("reason") == "server_restart"
        return None if ok else f"{g.label()}: nothing restored, reason {turn.get('reason')}"
    must = run.from_save.get(g.n)
    if must is None or cached is None or cached < must:
        return f"{g.label()}: restored {restored} (its prompt shares {must}), cache_n {cached}"
    return None


def _cache_failures(run: Run, cache_of: list[int | None]) -> list[str]:
    bad = []
    for g, cached in zip(run.gens, cache_of, strict=True):
        if g.previous is None or g.must_reuse == 0:
            continue
        if _after_restart(run, g):
            if (failure := _restart_failure(run, g, cached)) is not None:
                bad.append(failure)
            continue
        if cached is None or cached < g.must_reuse:
            bad.append(
                f"{g.label()}: cache_n {cached}, previous prompt (#{g.previous}) shares "
                f"{g.must_reuse + SLACK_TOKENS} tokens"
            )
    return bad


def test_after_a_server_restart_kvtui_restores_its_saves(run: Run) -> None:
    """The restart phase: at least one character's cache came back from disk."""
    firsts = [g for g in run.gens if _after_restart(run, g)]
    assert firsts, "the session has no turn after the restart"
    restored = [g.label() for g in firsts if run.turns[g.n].get("restored")]
    assert restored, f"no save was restored after the restart {run.where()}"


def test_kvtui_log_cache_covers_the_previous_prompt(run: Run) -> None:
    if len(run.turns) != len(run.gens):
        pytest.fail(f"turns.jsonl has {len(run.turns)} lines for {len(run.gens)} generations")
    bad = _cache_failures(run, [t.get("cache_n") for t in run.turns])
    assert not bad, "\n".join(bad)


def test_llama_server_reused_the_previous_prompt(run: Run) -> None:
    """The same, from llama-server's own final ``timings`` (what really happened)."""
    cached = [None if g.timings is None else int(g.timings.get("cache_n", 0)) for g in run.gens]
    bad = _cache_failures(run, cached)
    assert not bad, f"{len(bad)} turns lost their cache {run.where()}:\n" + "\n".join(bad)


def test_no_save_holds_another_chats_prompt(run: Run) -> None:
    """Each save's sidecar fingerprint (contracts.md) matches its own chat and character best."""
    saves = sorted((run.workdir / "slot-saves").glob("*.bin.json"))
    saves = [p for p in saves if not p.name.startswith(".kvtui-")]
    assert saves, f"kvtui made no saves in this session {run.where()}"
    try:
        from kvtui.fingerprint import (  # type: ignore[import-not-found,unused-ignore]
            PromptFingerprint,
            canonical_text,
        )
    except ImportError:
        pytest.fail("kvtui.fingerprint (contracts.md) is not built yet: sidecars carry no prompt")
    wrong = []
    for path in saves:
        side = json.loads(path.read_text(encoding="utf-8"))
        if "fingerprint" not in side:
            wrong.append(f"{path.name}: no fingerprint in the sidecar")
            continue
        fp = PromptFingerprint.from_json(side["fingerprint"])
        own = [
            canonical_text(g.body)
            for g in run.gens
            if (g.expected.chat, g.expected.character) == (side["chat"], side["character"])
        ]
        other = [
            canonical_text(g.body)
            for g in run.gens
            if (g.expected.chat, g.expected.character) != (side["chat"], side["character"])
        ]
        best_own = max((fp.common_prefix_chars(p) for p in own), default=0)
        best_other = max((fp.common_prefix_chars(p) for p in other), default=0)
        if best_own <= best_other:
            wrong.append(
                f"{path.name} ({side['chat']}, {side['character']}): matches its own prompts "
                f"for {best_own} chars, another chat's or character's for {best_other}"
            )
    assert not wrong, "\n".join(wrong)


def test_every_save_restored_holds_its_own_chats_prompt(run: Run) -> None:
    """Each save restored into the real server: one of its own chat and character's requests
    reuses all its tokens but the reply made after that prompt (``tests.e2e.probe``)."""
    assert run.probes, f"kvtui made no saves in this session {run.where()}"
    wrong = [
        f"{p.file} ({p.chat}, {p.character}): {p.n_restored} tokens restored, its own requests "
        f"reused at most {p.cache_n} (#{p.gen}, {p.tried} tried)"
        for p in run.probes
        if not p.covered
    ]
    assert not wrong, f"{len(wrong)} of {len(run.probes)} saves (margin {MARGIN}):\n" + "\n".join(
        wrong
    )
