"""The scripted recall session of ``test_recall_e2e.py``: a real SillyTavern, kvtui and a book.

Seraphina's current chat gets a kvtui memory book (``worlds/``, named after the chat) whose
memories have distinct keywords, and, through SillyTavern's own Author's Note panel, the note
``{{kvtui_memories}}`` "In-chat @ Depth" 0. The older Seraphina chat has a book too but no note
(no macro). ``run_recall_session`` clicks through, in Text Completion then Chat Completion: send,
send, swipe/regenerate, edit + regenerate, delete + regenerate, send; then the chat without the
macro in both APIs. Each generation becomes a ``Step``: what SillyTavern sent (the tap in front of
kvtui), what kvtui forwarded (a second tap in front of llama-server), kvtui's ``turns.jsonl``
line, the background refresh kvtui sent after the reply (``recall_refresh``) and SillyTavern's
chat afterwards (how it wrote the reply back). Every wait is on a condition.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvtui.memory.contract import Memory as Written
from kvtui.memory.lorebook import EntrySettings, Lorebook, book_file_name, book_name
from kvtui.memory.settings import MemorySettings
from kvtui.sillytavern import sample
from tests.e2e.stack import OLD_SOLO_CHAT_ID, Stack, chromium_path
from tests.e2e.tap import Recorded

if TYPE_CHECKING:  # the page driver needs playwright: imported where the page is driven
    from tests.e2e.page import StPage

MACRO = "{{kvtui_memories}}"
SOLO = sample.SOLO_CHAT_ID
#: keyword: content (the title is the keyword): the memories a step's user message names
MEMORIES = {
    "zeppelin": "A silver zeppelin once crashed beyond the northern ridge.",
    "marzipan": "Seraphina hides marzipan in a hollow oak for her guests.",
    "obsidian": "An obsidian key opens the shrine under the waterfall.",
    "lighthouse": "The old lighthouse on the coast has been dark for ten winters.",
    "harp": "Seraphina's harp was strung with moonlit silver by the dryads.",
    "compass": "Alex's brass compass always points toward the glade.",
    "lantern": "The blue lantern at the gate burns without oil.",
    "waterwheel": "The mill's waterwheel turns backwards on feast days.",
}


def write_book(user_dir: Path, chat: str) -> None:
    """The chat's kvtui memory book, as ``kvtui memory`` writes it."""
    settings = MemorySettings()
    path = user_dir / "worlds" / book_file_name(book_name(settings.memory_book_name, chat))
    book = Lorebook.open(path, chat)
    for i, (key, content) in enumerate(MEMORIES.items()):
        memory = Written(key.title(), content, (key,))
        book.add_memory(memory, (i, i + 1), EntrySettings.from_memory(settings))


def seed(user_dir: Path) -> None:
    write_book(user_dir, SOLO)
    write_book(user_dir, OLD_SOLO_CHAT_ID)


def is_refresh(r: Recorded) -> bool:
    """kvtui's own background refresh (``kvtui.proxy.recallrefresh``): one token, not streamed."""
    body = r.body if isinstance(r.body, dict) else {}
    return r.path == "/completion" and body.get("stream") is False and body.get("n_predict") == 1


def is_turn(r: Recorded) -> bool:
    """A generation SillyTavern asked for, as kvtui forwarded it (SillyTavern streams)."""
    return r.is_generation and isinstance(r.body, dict) and r.body.get("stream") is True


@dataclass
class Step:
    label: str
    api: str  # "text" | "chat"
    chat: str
    st: Recorded  # what SillyTavern's server sent kvtui
    server: Recorded  # what kvtui sent llama-server for it
    turn: dict[str, Any]  # kvtui's turns.jsonl line
    refresh: Recorded | None  # kvtui's background refresh after the reply
    chat_after: list[dict[str, Any]]  # SillyTavern's chat once the reply was written

    @property
    def recall(self) -> dict[str, Any]:
        recall: dict[str, Any] = self.turn.get("recall") or {}
        return recall

    def st_text(self) -> str:
        return _text(self.st.body)

    def server_text(self) -> str:
        return _text(self.server.body)


def _text(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("prompt"), str):
        return str(body["prompt"])
    messages = body.get("messages", []) if isinstance(body, dict) else []
    return "\n".join(str(m.get("content", "")) for m in messages)


@dataclass
class RecallRun:
    steps: dict[str, Step]
    workdir: Path
    llama_url: str
    server_records: list[Recorded]
    kept: bool = True  # kvtui's defaults; False: recall_keep_in_history = false

    def where(self) -> str:
        return f"(logs in {self.workdir}: proxy.log, sillytavern.log, llama.log)"


class Recorder:
    """Runs one generation action and collects its ``Step`` once everything it causes is in."""

    def __init__(self, st: StPage, *, refreshes: bool) -> None:
        self.st = st
        self.refreshes = refreshes  # a refresh follows each reply with recall
        self.steps: dict[str, Step] = {}

    @property
    def stack(self) -> Stack:
        return self.st.stack

    def _server_turns(self) -> list[Recorded]:
        assert self.stack.server_tap is not None
        return [r for r in self.stack.server_tap.snapshot() if is_turn(r)]

    def step(self, label: str, api: str, chat: str, act: Any, *, refresh: bool = True) -> Step:
        refresh = refresh and self.refreshes
        from tests.e2e.page import wait_until

        tap = self.stack.tap
        server_tap = self.stack.server_tap
        assert tap is not None and server_tap is not None
        n_st, n_server, n_turns = (
            len(tap.generations()),
            len(self._server_turns()),
            len(self.stack.turns()),
        )
        act()  # StPage waits until the tap saw the reply and the page is idle
        records = tap.generations()
        assert len(records) == n_st + 1, f"{label}: {len(records) - n_st} generation requests"
        server = wait_until(
            lambda: [r for r in self._server_turns()[n_server:] if r.finished is not None],
            f"{label}: kvtui's request to llama-server",
        )[0]
        turn = wait_until(
            lambda: self.stack.turns()[n_turns:], f"{label}: kvtui's turns.jsonl line"
        )[0]
        found: Recorded | None = None
        if refresh:
            found = wait_until(
                lambda: next(
                    (r for r in server_tap.snapshot()[server.seq + 1 :]
                     if is_refresh(r) and r.finished is not None),
                    None,
                ),
                f"{label}: kvtui's refresh after the reply",
                timeout=60,
            )  # fmt: skip
        out = Step(label, api, chat, records[n_st], server, turn, found, self.st.messages())
        self.steps[label] = out
        return out


def _session(st: StPage, kept: bool) -> dict[str, Step]:
    rec = Recorder(st, refreshes=not kept)
    step = rec.step
    # -- Text Completion: the note through SillyTavern's own Author's Note panel -------------
    st.connect_text_completion()
    assert st.open_character("Seraphina.png") == SOLO
    st.set_authors_note(MACRO, depth=0)
    step("tc_send", "text", SOLO, lambda: st.send("Did you see the zeppelin fall last night?"))
    step("tc_next", "text", SOLO, lambda: st.send("Would you share the marzipan with me?"))
    step("tc_swipe", "text", SOLO, st.swipe)

    def edit_regenerate(text: str) -> None:
        st.edit_message(-2, text)
        st.regenerate()

    step("tc_edit", "text", SOLO, lambda: edit_regenerate("Is the obsidian key still hidden?"))

    def delete_regenerate() -> None:
        st.delete_from(-2)  # the edited message and its reply
        st.regenerate()  # the reply to the zeppelin message again

    step("tc_delete", "text", SOLO, delete_regenerate)
    step("tc_after", "text", SOLO, lambda: st.send("Is that the lighthouse on the coast?"))
    # the same with SillyTavern's older (regex) macro engine: the setting unchecked
    assert st.page.evaluate("() => SillyTavern.getContext().powerUserSettings"
                            ".experimental_macro_engine") is True  # fmt: skip
    st.set_macro_engine(False)
    step("tc_legacy", "text", SOLO, lambda: st.send("Who built the waterwheel?"))
    st.set_macro_engine(True)
    # -- Chat Completion, the same chat and note (a system message at depth 0) -----------------
    st.connect_chat_completion()
    step("cc_send", "chat", SOLO, lambda: st.send("What does your harp sound like?"))
    step("cc_next", "chat", SOLO, lambda: st.send("Where does my compass point?"))
    step("cc_regenerate", "chat", SOLO, st.regenerate)
    step("cc_edit", "chat", SOLO, lambda: edit_regenerate("Is the lantern at the gate lit?"))
    # -- the older chat: a book, no note, so no macro: passed on as sent -----------------------
    st.open_chat_from_list(OLD_SOLO_CHAT_ID)
    step("cc_plain", "chat", OLD_SOLO_CHAT_ID, lambda: st.send("Did the zeppelin land?"),
         refresh=False)  # fmt: skip
    st.connect_text_completion()
    step("tc_plain", "text", OLD_SOLO_CHAT_ID, lambda: st.send("And the marzipan?"),
         refresh=False)  # fmt: skip
    return rec.steps


def run_recall_session(stack: Stack, *, kept: bool = True) -> RecallRun:
    """The whole session on a started ``stack`` (SillyTavern and kvtui stop at the end;
    llama-server stays up for the checks' ``/tokenize`` and ``/apply-template``)."""
    from playwright.sync_api import sync_playwright

    from tests.e2e.page import StPage, launch

    chromium = chromium_path()
    assert chromium is not None
    with sync_playwright() as pw:
        context, page = launch(pw, chromium, str(stack.workdir / "profile"))
        try:
            st = StPage(page, stack)
            st.open()
            steps = _session(st, kept)
        except Exception:
            page.screenshot(path=str(stack.workdir / "failure.png"))
            raise
        finally:
            context.close()
    assert stack.llama is not None and stack.server_tap is not None
    stack.stop_clients()
    _write_record(stack.workdir / "recall-steps.json", steps)
    records = stack.server_tap.snapshot()
    return RecallRun(steps, stack.workdir, stack.llama.url, records, kept)


def _write_record(path: Path, steps: dict[str, Step]) -> None:
    """Each step as SillyTavern sent it, as kvtui forwarded it, and kvtui's turn (for reading a
    run: the tail of each prompt, where the note and the reply are)."""
    rows = {
        label: {
            "api": s.api, "chat": s.chat, "recall": s.recall, "cache_n": s.turn.get("cache_n"),
            "server_timings": s.server.timings, "reply": s.server.reply_text,
            "sillytavern_tail": s.st_text()[-400:], "forwarded_tail": s.server_text()[-400:],
            "refresh_tail": _text(s.refresh.body)[-400:] if s.refresh else None,
        }
        for label, s in steps.items()
    }  # fmt: skip
    path.write_text(json.dumps(rows, indent=1, ensure_ascii=False), encoding="utf-8")


def recall_stack(workdir: Path, *, kept: bool = True) -> Stack:
    """The module's stack: kvtui between two taps, the books seeded; ``kept``: kvtui's
    defaults (each turn's recall kept in the prompt), else ``recall_keep_in_history = false``
    (each turn's recall alone, the slot refreshed after the reply)."""
    if not kept:
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "kvtui-config.toml"
        config.write_text("recall_keep_in_history = false\n", encoding="utf-8")
    return Stack(workdir, seed=seed, tap_server=True)
