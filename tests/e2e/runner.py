"""One run of the e2e session: the stack, the browser, and what was recorded.

``run_variant`` starts the stack for a variant ("plain": kvtui without its extension;
"extension": with kvtui's companion extension; "direct": no kvtui, SillyTavern talks to
llama-server through the tap alone), clicks through ``tests.e2e.session.run_session`` in
headless Chromium, and returns a ``Run``: each generation with what it is, what the tap saw and
what it had to reuse, kvtui's decision log, the extension's events, llama-server's prefilled
tokens per phase and, through kvtui, what every save really held (``tests.e2e.probe``).
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.probe import SaveProbe, probe_saves
from tests.e2e.stack import Stack, chromium_path

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
    reply: str
    prompt: str  # Text Completion prompt, or the Chat Completion messages rendered by the server
    previous: int | None  # the previous generation of the same chat and character
    must_reuse: int  # tokens of the common prefix with that one's prompt (0 when none)

    def label(self) -> str:
        e = self.expected
        return f"#{self.n} {e.scenario} ({e.api}, {e.character}, {e.type})"


@dataclass
class Run:
    variant: str
    gens: list[Gen]
    turns: list[dict[str, Any]]
    events: list[tuple[int, dict[str, Any]]]  # (the tap's arrival number, event)
    opens: list[str]  # the chats the session opened, in order
    workdir: Path
    prefill: dict[str, int]  # llama-server's prefilled tokens per phase (tests.e2e.parity)
    probes: list[SaveProbe] = field(default_factory=list)
    from_save: dict[int, int] = field(default_factory=dict)
    """For each turn kvtui restored a save for: the tokens its prompt shares with the prompt
    that save was made from (minus a few for tokenisation), i.e. what the restore must give."""

    def where(self) -> str:
        return f"(logs in {self.workdir}: proxy.log, sillytavern.log, llama.log)"


def post_json(url: str, body: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
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
    rendered = post_json(llama_url + "/apply-template", {"messages": body.get("messages", [])})
    return str(rendered["prompt"])


def _write_record(path: Path, gens: list[Gen], prefill: dict[str, int]) -> None:
    """What each generation was and what llama-server reported for it (for reading a run)."""
    rows = [
        {**g.expected.as_json(), "n": g.n, "status": g.status, "reply": g.reply,
         "prompt_chars": len(g.prompt), "timings": g.timings}
        for g in gens
    ]  # fmt: skip
    path.write_text(
        json.dumps({"prefill": prefill, "gens": rows}, indent=1, ensure_ascii=False),
        encoding="utf-8",
    )


def run_variant(variant: str, workdir: Path) -> Run:
    """The whole session for ``variant`` ("plain", "extension" or "direct")."""
    from playwright.sync_api import sync_playwright

    from tests.e2e.page import StPage, launch
    from tests.e2e.session import run_session

    chromium = chromium_path()
    assert chromium is not None
    stack = Stack(workdir, install_extension=variant == "extension", with_proxy=variant != "direct")
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
        prefill = stack.prefill_by_phase()
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
                must = _shared_tokens(stack.llama.url, gens[prev].prompt, prompt)
            last[key] = n
            gens.append(
                Gen(n, rec.seq, exp, rec.path, rec.status, body, rec.timings,
                    rec.reply_text, prompt, prev, must)
            )  # fmt: skip
        assert len(records) == len(expected), (
            f"{len(records)} generation requests reached kvtui for {len(expected)} generations"
        )
        turns = stack.turns()
        _write_record(workdir / "gens.json", gens, prefill)
        result = Run(variant, gens, turns, events, opens, workdir, prefill)
        if stack.with_proxy:
            stack.stop_clients()  # kvtui stops before its saves are checked: nothing moves
            result.probes = probe_saves(stack, gens)
            result.from_save = _restore_shares(stack.llama.url, result)
            probes = [asdict(p) | {"covered": p.covered} for p in result.probes]
            (workdir / "probes.json").write_text(json.dumps(probes, indent=1), encoding="utf-8")
    return result


def _shared_tokens(llama_url: str, a: str, b: str) -> int:
    prefix = _common_prefix(a, b)
    if not prefix:
        return 0
    tokens = post_json(llama_url + "/tokenize", {"content": prefix})["tokens"]
    return max(0, len(tokens) - SLACK_TOKENS)


def _restore_shares(llama_url: str, run: Run) -> dict[int, int]:
    by_file = {p.file: p for p in run.probes}
    out: dict[int, int] = {}
    for g, turn in zip(run.gens, run.turns, strict=False):
        probe = by_file.get(str(turn.get("restored")))
        if probe is not None and probe.gen is not None:
            out[g.n] = _shared_tokens(llama_url, run.gens[probe.gen].prompt, g.prompt)
    return out
