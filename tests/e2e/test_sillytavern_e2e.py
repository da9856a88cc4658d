"""End to end in a real SillyTavern 1.19: every generation's chat, character, type and cache.

One module-scoped run per variant ("plain": no extension, kvtui decides from evidence;
"extension": kvtui's companion extension installed): llama-server (2 slots) ← ``kvtui proxy`` ←
recording tap ← SillyTavern's server ← SillyTavern's page in headless Chromium, clicked through the
scripted session of ``tests/e2e/session.py`` (Text Completion one-to-one with send, swipe,
continue, edit + regenerate, impersonate; an existing chat opened from the list and swiped first;
the group with a muted member; Chat Completion one-to-one and a group round).

Assertions, per generation:
- it reached kvtui and llama-server answered (the tap);
- with the extension, its ``kvtui`` object arrived with the right chat, character, group and type
  (Text Completion in the body; Chat Completion through ``custom_include_body``);
- kvtui's decision log ``<state_dir>/turns.jsonl`` (contracts.md) has one line for it with the
  right chat, character and ``gen_type`` (and, with the extension, ``source`` extension/explicit);
- its ``cache_n`` covers the previous prompt of the same chat and character: at least the tokens of
  the two prompts' common prefix (minus a few tokens for tokenisation at the boundary) were reused,
  both in kvtui's log and in llama-server's own final ``timings`` seen at the tap.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import Stack, chromium_path, missing_requirements

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
]

SLACK_TOKENS = 4  # a prefix cut mid-word can tokenise a few tokens differently


@dataclass
class Gen:
    """One generation of the session: what it is, what the tap saw, what it had to reuse."""

    n: int
    seq: int  # the tap's arrival number (shared with the events)
    expected: Any  # tests.e2e.session.Expected
    path: str
    status: int | None
    body: dict[str, Any]
    timings: dict[str, Any] | None
    prompt: str  # Text Completion prompt, or the Chat Completion messages rendered by the server
    previous: int | None  # the previous generation of the same chat and character
    must_reuse: int  # tokens of the common prefix with that one's prompt (0 when none)


@dataclass
class Run:
    variant: str
    gens: list[Gen]
    turns: list[dict[str, Any]]
    events: list[tuple[int, dict[str, Any]]]  # (the tap's arrival number, event)
    opens: list[str]  # the chats the session opened, in order
    workdir: Path

    def where(self) -> str:
        return f"(logs in {self.workdir}: proxy.log, sillytavern.log, llama.log)"


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]


def _prompt_text(llama_url: str, body: dict[str, Any]) -> str:
    if isinstance(body.get("prompt"), str):
        return str(body["prompt"])
    rendered = _post(llama_url + "/apply-template", {"messages": body.get("messages", [])})
    return str(rendered["prompt"])


def _run_session(variant: str, workdir: Path) -> Run:
    from playwright.sync_api import sync_playwright

    from tests.e2e.page import StPage, launch
    from tests.e2e.session import run_session

    chromium = chromium_path()
    assert chromium is not None
    stack = Stack(workdir, install_extension=variant == "extension")
    opens: list[str] = []
    with stack:
        with sync_playwright() as pw:
            context, page = launch(pw, chromium, str(workdir / "profile"))
            try:
                st = StPage(page, stack)
                st.open()
                expected = run_session(st, on_open=lambda *a: opens.append(a[3]))
            except Exception:
                page.screenshot(path=str(workdir / "failure.png"))
                raise
            finally:
                context.close()
        assert stack.tap is not None and stack.llama is not None
        records = stack.tap.generations()
        events = [
            (r.seq, r.body)
            for r in stack.tap.events()
            if r.path == "/kvtui/v1/event" and isinstance(r.body, dict)
        ]
        gens: list[Gen] = []
        last: dict[tuple[str, str], int] = {}
        for n, (exp, rec) in enumerate(zip(expected, records, strict=False)):
            body = rec.body if isinstance(rec.body, dict) else {}
            prompt = _prompt_text(stack.llama.url, body)
            key = (exp.chat, exp.character)
            prev = last.get(key)
            must = 0
            if prev is not None:
                prefix = _common_prefix(gens[prev].prompt, prompt)
                if prefix:
                    tokens = _post(stack.llama.url + "/tokenize", {"content": prefix})["tokens"]
                    must = max(0, len(tokens) - SLACK_TOKENS)
            last[key] = n
            gens.append(
                Gen(n, rec.seq, exp, rec.path, rec.status, body, rec.timings, prompt, prev, must)
            )
        assert len(records) == len(expected), (
            f"{len(records)} generation requests reached kvtui for {len(expected)} generations"
        )
        turns = stack.turns()
    return Run(variant, gens, turns, events, opens, workdir)


@pytest.fixture(scope="module", params=["plain", "extension"])
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    variant = str(request.param)
    workdir = tmp_path_factory.mktemp(f"st-e2e-{variant}")
    result = _run_session(variant, workdir)
    yield result
    shutil.rmtree(workdir / "profile", ignore_errors=True)


def _label(g: Gen) -> str:
    e = g.expected
    return f"#{g.n} {e.scenario} ({e.api}, {e.character}, {e.type})"


def test_every_generation_reached_kvtui_and_was_answered(run: Run) -> None:
    bad = [f"{_label(g)}: HTTP {g.status}" for g in run.gens if g.status != 200]
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
            wrong.append(f"{_label(g)}: no kvtui object in the body")
            continue
        diff = {k: got.get(k) for k, v in want.items() if got.get(k) != v}
        if diff:
            wrong.append(f"{_label(g)}: {diff}")
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
            late.append(f"{_label(g)}: last chat_opened {before[-1]['chat'] if before else None}")
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
        for field, want in (("chat", e.chat), ("character", e.character), ("gen_type", e.type)):
            if turn.get(field) != want:
                diff[field] = (turn.get(field), want)
        if run.variant == "extension" and turn.get("source") not in ("extension", "explicit"):
            diff["source"] = (turn.get("source"), "extension")
        if diff:
            wrong.append(f"{_label(g)}: got/want {diff}")
    assert not wrong, f"{len(wrong)} of {len(run.gens)} wrong:\n" + "\n".join(wrong)


def _cache_failures(run: Run, cache_of: list[int | None]) -> list[str]:
    bad = []
    for g, cached in zip(run.gens, cache_of, strict=True):
        if g.previous is None or g.must_reuse == 0:
            continue
        if cached is None or cached < g.must_reuse:
            bad.append(
                f"{_label(g)}: cache_n {cached}, previous prompt (#{g.previous}) shares "
                f"{g.must_reuse + SLACK_TOKENS} tokens"
            )
    return bad


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
        from kvtui.fingerprint import PromptFingerprint  # type: ignore[import-not-found,unused-ignore]
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
            g.prompt
            for g in run.gens
            if (g.expected.chat, g.expected.character) == (side["chat"], side["character"])
        ]
        other = [
            g.prompt
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
