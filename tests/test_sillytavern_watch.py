"""Watching a SillyTavern user directory for active-chat changes (real file events)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from watchfiles import Change

from kvtui.sillytavern import ChatRef, SillyTavernData, build_sample
from kvtui.sillytavern import sample as sample_mod
from kvtui.sillytavern.watch import chat_event_filter, watch_active

WAIT = 10.0  # upper bound for an event to arrive; normally well under a second

SOLO = Path("chats", "Seraphina", f"{sample_mod.SOLO_CHAT_ID}.jsonl")
GROUP = Path("group chats", f"{sample_mod.GROUP_CHAT_ID}.jsonl")


def rewrite(path: Path, extra_line: str) -> None:
    """SillyTavern's save: the whole file to a temp name next to it, then a rename."""
    temp = path.with_name(path.name + f".{time.monotonic_ns() % 10**9}")
    temp.write_bytes(path.read_bytes() + b"\n" + extra_line.encode())
    os.replace(temp, path)


class Recorder:
    def __init__(self) -> None:
        self.refs: list[ChatRef] = []
        self.changed = asyncio.Event()

    async def __call__(self, ref: ChatRef) -> None:  # an async callback is awaited
        self.refs.append(ref)
        self.changed.set()


async def until(recorder: Recorder, action: Callable[[], None]) -> None:
    """Repeat ``action`` until the watcher reports (the watch may still be starting)."""
    deadline = time.monotonic() + WAIT
    while not recorder.changed.is_set():
        assert time.monotonic() < deadline, "no active-chat change reported"
        action()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(recorder.changed.wait(), timeout=0.5)
    recorder.changed.clear()


@contextlib.asynccontextmanager
async def watching(
    st: SillyTavernData, recorder: Recorder, *, every_write: bool = False, recheck_s: float = 2.0
) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        watch_active(st, recorder, stop, every_write=every_write, recheck_s=recheck_s)
    )
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=WAIT)  # the watch ends promptly when stopped


@pytest.fixture
def st(tmp_path: Path) -> SillyTavernData:
    return SillyTavernData(build_sample(tmp_path / "default-user"))


async def settle(recorder: Recorder, quiet: float = 0.5) -> None:
    """Wait until no report has arrived for ``quiet`` seconds, then forget what was reported."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        recorder.changed.clear()
        try:
            await asyncio.wait_for(recorder.changed.wait(), timeout=quiet)
        except TimeoutError:
            break
    recorder.refs.clear()
    recorder.changed.clear()


async def go_live(st: SillyTavernData, recorder: Recorder) -> None:
    """Write the two sample chats in turn until the watch reports one, then settle.

    Alternating makes sure there is a change whichever chat the watch took as its baseline.
    """
    targets = itertools.cycle([st.user_dir / SOLO, st.user_dir / GROUP])
    await until(recorder, lambda: rewrite(next(targets), USER_LINE))
    await settle(recorder)


USER_LINE = '{"name":"Alex","is_user":true,"is_system":false,"mes":"hi"}'


async def test_switch_to_another_chat_is_reported(st: SillyTavernData) -> None:
    recorder = Recorder()
    async with watching(st, recorder):
        await go_live(st, recorder)
        active = st.active_chat()
        assert active is not None
        other = st.user_dir / (SOLO if active.is_group else GROUP)
        await until(recorder, lambda: rewrite(other, USER_LINE))
        assert [r.path for r in recorder.refs] == [other]
        await settle(recorder)
        # Writing the active chat again is not a change of chat.
        rewrite(other, USER_LINE)
        await settle(recorder)
        assert recorder.refs == []
        back = active.path
        await until(recorder, lambda: rewrite(back, USER_LINE))
        assert [r.path for r in recorder.refs] == [back]


async def test_every_write_reports_rewrites_of_the_active_chat(st: SillyTavernData) -> None:
    recorder = Recorder()
    async with watching(st, recorder, every_write=True):
        await go_live(st, recorder)
        active = st.active_chat()
        assert active is not None
        await until(recorder, lambda: rewrite(active.path, USER_LINE))
        assert {r.path for r in recorder.refs} == {active.path}


async def test_watch_starts_before_the_folders_exist(tmp_path: Path) -> None:
    st = SillyTavernData(tmp_path)
    recorder = Recorder()
    created: list[Path] = []

    def create() -> None:  # a new chat each time, so each one changes the active chat
        chat = tmp_path / "chats" / "Kael" / f"Kael - {len(created)}.jsonl"
        chat.parent.mkdir(parents=True, exist_ok=True)
        chat.write_text('{"chat_metadata":{}}')
        created.append(chat)

    async with watching(st, recorder, recheck_s=0.2):
        await until(recorder, create)
    assert recorder.refs[0].avatar == "Kael.png" and recorder.refs[0].path in created


async def test_callback_errors_do_not_stop_the_watch(st: SillyTavernData) -> None:
    calls: list[str] = []
    seen = asyncio.Event()

    def broken(ref: ChatRef) -> None:
        calls.append(ref.chat_id)
        seen.set()
        raise RuntimeError("callback bug")

    stop = asyncio.Event()
    task = asyncio.create_task(st.watch_active(broken, stop))
    targets = itertools.cycle([st.user_dir / SOLO, st.user_dir / GROUP])
    deadline = time.monotonic() + WAIT
    for _ in range(2):  # a second report proves the watch survived the first one's error
        seen.clear()
        while not seen.is_set():
            assert time.monotonic() < deadline
            rewrite(next(targets), USER_LINE)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(seen.wait(), timeout=0.5)
    stop.set()
    await asyncio.wait_for(task, timeout=WAIT)
    assert len(calls) >= 2


def test_event_filter(tmp_path: Path) -> None:
    accept = chat_event_filter(tmp_path)
    ok = [
        "chats",
        "chats/Seraphina",
        "chats/Seraphina/Seraphina - x.jsonl",
        "group chats/2026-05-03@19h02m11s004ms.jsonl",
        "groups/1777824131004.json",
    ]
    ignored = [
        "chats/Seraphina/Seraphina - x.jsonl.3184291377",  # write-file-atomic temp name
        "chats/Seraphina/.hidden.jsonl",
        "backups/chat_seraphina_20260503-184546.jsonl",
        "group chats/2026.jsonl.123",
        "settings.json",
        "characters/Seraphina.png",
        "chats/a/b/c.jsonl",
    ]
    for rel in ok:
        assert accept(Change.added, str(tmp_path / rel)), rel
    for rel in ignored:
        assert not accept(Change.modified, str(tmp_path / rel)), rel
    assert not accept(Change.added, "/elsewhere/chats/x.jsonl")
