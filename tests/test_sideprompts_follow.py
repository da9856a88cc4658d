"""The interval trigger through the real background loop, on a SillyTavern 1.19-shaped data
directory and the real embedded llama-server.

:class:`kvtui.sideprompts.follow.LiveSidePrompts` is what the dashboard's worker and
``kvtui proxy``'s task run. SillyTavern's writes (temp file, then a rename onto the chat) are
appended one message at a time; the test waits on what the follower has seen (never on time)
and shows that the template fires exactly at its threshold, once, not in between, again at the
next threshold, and that its checkpoint persists for a new follower.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from kvtui.embedded.server import EmbeddedServer
from kvtui.memory.lorebook import Lorebook
from kvtui.service import KvService
from kvtui.settings import Settings
from kvtui.sideprompts.follow import LiveSidePrompts, follows_live_chat
from kvtui.sideprompts.interval import IntervalTrigger
from tests import st119
from tests.sideprompt_helpers import only, tiny

CHAT = st119.CHAT_A  # written last: SillyTavern's active chat


async def until(predicate: Callable[[], bool], what: str, *, bound: float = 300.0) -> None:
    """Wait until ``predicate`` holds (a generous bound for a loaded machine)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def equal(value: Callable[[], object], expected: object) -> Callable[[], bool]:
    return lambda: value() == expected


def above(value: Callable[[], int], floor: int) -> Callable[[], bool]:
    return lambda: value() > floor


def send(user_dir: Path, text: str) -> int:
    """Append one message the way SillyTavern saves a chat; returns the message count."""
    path = user_dir / "chats" / st119.SERA / f"{CHAT}.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    speaker = st119.USER if len(lines) % 2 == 0 else st119.SERA
    lines.append(json.dumps(st119._line(speaker, text, False, len(lines) % 60), ensure_ascii=False))
    temp = path.with_name(f"{path.name}.tmp{len(lines)}")
    temp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(temp, path)
    return len(lines) - 1  # minus the header


async def test_interval_fires_once_at_the_threshold_in_the_background(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    user_dir = st119.build(tmp_path / "default-user", now=time.time())
    state = tmp_path / "state"
    settings = Settings(server_url=clean_server.url, save_dir=clean_server.save_dir,
                        st_dir=user_dir, state_dir=state, memory_slot=3,
                        memory_n_predict=64)  # fmt: skip
    kv = KvService(settings)
    assert follows_live_chat(kv)
    waits: list[int] = []
    release = asyncio.Event()

    async def debounce() -> None:  # the ~10 s debounce, held by the test instead
        waits.append(1)
        await release.wait()
        release.clear()

    live = LiveSidePrompts(kv, debounce=debounce)  # inotify: polling sees mtimes in seconds
    only(live.service, tiny("Every3", interval=3))
    live.service.checkpoints.set(CHAT, "every3", 4)  # the chat's five messages were seen
    trigger = live.trigger

    def pending() -> int:
        return trigger.pending

    stop = asyncio.Event()
    task = asyncio.create_task(live.run(stop))
    try:
        await until(lambda: trigger.observations >= 1, "the first look at the active chat")
        assert trigger.seen == {CHAT: 5} and not trigger.pending
        # The watch starts after that first look: re-save the chat until a write is seen.
        path = user_dir / "chats" / st119.SERA / f"{CHAT}.jsonl"
        for n in range(600):
            seen = trigger.observations
            os.utime(path, (time.time() + n, time.time() + n))
            try:
                await until(above(lambda: trigger.observations, seen), "a write", bound=1.0)
                break
            except AssertionError:
                continue
        else:
            raise AssertionError("the follower never saw a write of the active chat")

        for threshold, (first, last) in enumerate([(5, 7), (8, 10)], start=1):
            for _ in range(2):  # below the threshold: nothing is scheduled
                count = send(user_dir, "The lanterns by the river flicker.")
                await until(equal(lambda: trigger.seen.get(CHAT), count), f"message {count}")
                assert pending() == 0 and len(waits) == threshold - 1
                assert len(trigger.outcomes) == threshold - 1
            count = send(user_dir, "Seraphina hums an old song.")  # the threshold
            await until(equal(lambda: len(waits), threshold), "the debounce")
            assert pending() == 1 and len(trigger.outcomes) == threshold - 1
            release.set()
            await until(equal(lambda: len(trigger.outcomes), threshold), "the run")
            outcome = trigger.outcomes[-1]
            assert outcome.status == "saved", outcome.message
            assert (outcome.start, outcome.end) == (first, last) and last == count - 1
            assert live.service.checkpoints.get(CHAT, "every3") == last
            ref = live.service.find_chat(CHAT)
            entries = list(Lorebook.open(live.service.book_for(ref)[1], CHAT).entries.values())
            assert [e["content"] for e in entries] == [outcome.text]  # one entry, in place
        assert len(waits) == 2
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=60)
        await kv.aclose()
    logged = [e.message for e in kv.events.recent() if "Every3" in e.message]
    assert len(logged) == 4 and "running on" in logged[0] and "✓ Every3" in logged[1], logged

    # The checkpoint is kept in the state directory: a new follower does not fire again.
    kv = KvService(settings)
    try:
        again = IntervalTrigger(LiveSidePrompts(kv).service)
        assert await again.observe(CHAT) == 0 and again.seen == {CHAT: 11}
    finally:
        await kv.aclose()
