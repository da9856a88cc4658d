"""The chat-switch watcher on a real SillyTavern directory (kvtui's sample, in ST's formats),
with the proxy and the real embedded llama-server.

Switching chats saves every character used at least once, erases all slots, and places the new
chat's unmuted characters; their caches come back on their first generation.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.events import Kind
from kvtui.service import KvService
from kvtui.sillytavern import copy_sample
from kvtui.sillytavern.sample import GROUP_CHAT_ID, SOLO_CHAT_ID
from tests.test_proxy import (
    USER,
    Harness,
    group_stop,
    isolated_config,
    make_settings,
    running_proxy,
    slot_states,
    st_body,
    st_prompt,
)

__all__ = ["isolated_config"]

MEMBERS = ["Seraphina", "Kael", "Mira", "Brann"]  # Brann is muted in the sample group


@pytest.fixture
def st_dir(tmp_path: Path) -> Path:
    return copy_sample(tmp_path / "data")


def chat_file(user_dir: Path, chat_id: str) -> Path:
    if chat_id == SOLO_CHAT_ID:
        return user_dir / "chats" / "Seraphina" / f"{chat_id}.jsonl"
    return user_dir / "group chats" / f"{chat_id}.jsonl"


def user_sends(user_dir: Path, chat_id: str, text: str) -> None:
    """What SillyTavern does when the user sends a message: rewrite the whole chat file
    atomically (temp file, then rename) with the new line at the end, no trailing newline."""
    path = chat_file(user_dir, chat_id)
    line = {
        "name": USER,
        "is_user": True,
        "is_system": False,
        "send_date": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "mes": text,
        "extra": {"isSmallSys": False},
    }
    content = path.read_text(encoding="utf-8") + "\n" + json.dumps(line, separators=(",", ":"))
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(content, encoding="utf-8")
    os.replace(tmp, path)


async def wait_for(condition: object, seconds: float = 10.0) -> None:
    assert callable(condition)
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out waiting for the chat switch")


@asynccontextmanager
async def watching(harness: Harness) -> AsyncIterator[None]:
    """The proxy's chat-switch watcher running, as ``kvtui proxy`` runs it."""
    assert harness.service.follows_chats
    stop = asyncio.Event()
    task = asyncio.create_task(harness.service.follow_chats(stop))
    try:
        await wait_for(lambda: harness.service.current_chat is not None)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


def switches(service: KvService) -> list[str]:
    return [e.message for e in service.events.recent() if e.kind is Kind.CHAT_SWITCH]


def saves_of(server: EmbeddedServer, character: str) -> list[str]:
    assert server.save_dir is not None
    return sorted(p.name for p in server.save_dir.glob(f"*_character_{character}.bin"))


async def test_chat_switch_saves_clears_and_places(
    clean_server: EmbeddedServer, tmp_path: Path, st_dir: Path
) -> None:
    settings = make_settings(clean_server, tmp_path, st_dir=st_dir, autosave_every=100)
    async with running_proxy(settings) as h, watching(h):
        service = h.service
        # At start kvtui adopts SillyTavern's active chat (the group) without erasing anything.
        assert service.current_chat == GROUP_CHAT_ID
        assert not any(s.startswith("Chat switch") for s in switches(service))

        lines = [(USER, "Thank you. Are we all ready for tomorrow?")]
        first: dict[str, int] = {}
        for member in ("Seraphina", "Kael"):
            body = st_body(st_prompt(member, lines), group_stop(member, MEMBERS))
            result = await h.complete(body)
            assert result["id_slot"] == service.book.find(GROUP_CHAT_ID, member)
            first[member] = result["tokens_evaluated"]
            lines.append((member, result["content"].strip() or "..."))
        states = await slot_states(clean_server)
        for member in ("Seraphina", "Kael"):
            slot = service.book.find(GROUP_CHAT_ID, member)
            assert slot is not None and states[slot]["n_prompt_tokens"] > 0

        # The user opens the 1:1 chat with Seraphina and writes: the watcher switches.
        user_sends(st_dir, SOLO_CHAT_ID, "*I take the cup.* Is it hot?")
        await wait_for(lambda: service.current_chat == SOLO_CHAT_ID)
        await wait_for(lambda: len(switches(service)) >= 2)
        assert len(saves_of(clean_server, "Seraphina")) == 1
        assert len(saves_of(clean_server, "Kael")) == 1
        assert not saves_of(clean_server, "Mira")  # never used: nothing to save
        # Released, not erased: the server keeps what the slots hold (the new chat reuses the
        # prefix its prompts share, e.g. the cards), and the book no longer claims any of it.
        assert any(s.get("n_prompt_tokens", 0) > 0 for s in await slot_states(clean_server))
        placed = [(r.chat, r.character) for r in service.book.snapshot() if r.character]
        assert placed == [(SOLO_CHAT_ID, "Seraphina")]

        # Back to the group: the request arrives right after the chat file is written, before
        # the watcher may have noticed; either way there is exactly one switch.
        user_sends(st_dir, GROUP_CHAT_ID, "Kael, how far is the bridge?")
        lines.append((USER, "Kael, how far is the bridge?"))
        body = st_body(st_prompt("Kael", lines), group_stop("Kael", MEMBERS))
        result = await h.complete(body)
        assert service.current_chat == GROUP_CHAT_ID
        seats = [(r.slot, r.character) for r in service.book.snapshot() if r.character]
        assert seats == [(0, "Seraphina"), (1, "Kael"), (2, "Mira")]  # Brann is muted
        assert result["id_slot"] == 1
        # Kael's save from the group chat was restored before his reply.
        assert result["timings"]["cache_n"] >= first["Kael"] - 1
        assert any("Restored Kael" in e.message for e in service.events.recent())
        # Seraphina sat unused in the 1:1 chat: no save was made for that chat.
        assert len(saves_of(clean_server, "Seraphina")) == 1
        await asyncio.sleep(0.3)  # give a late watcher event the chance to switch twice
        assert len([s for s in switches(service) if s.startswith("Chat switch")]) == 2


async def test_switch_disabled_only_changes_the_current_chat(
    clean_server: EmbeddedServer, tmp_path: Path, st_dir: Path
) -> None:
    settings = make_settings(
        clean_server, tmp_path, st_dir=st_dir, clear_on_chat_switch=False, autosave_every=100
    )
    async with running_proxy(settings) as h, watching(h):
        lines = [(USER, "Hello!")]
        await h.complete(st_body(st_prompt("Kael", lines), group_stop("Kael", MEMBERS)))
        slot = h.service.book.find(GROUP_CHAT_ID, "Kael")
        assert slot is not None
        user_sends(st_dir, SOLO_CHAT_ID, "Hello again.")
        await wait_for(lambda: h.service.current_chat == SOLO_CHAT_ID)
        assert h.service.book.find(GROUP_CHAT_ID, "Kael") == slot
        assert (await slot_states(clean_server))[slot]["n_prompt_tokens"] > 0
        assert not saves_of(clean_server, "Kael")
