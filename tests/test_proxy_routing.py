"""Automatic mode through the proxy, end to end on the real embedded llama-server.

Requests are shaped exactly as SillyTavern sends them (non-instruct prompts ending in
``\\nName:``; in groups the stop strings name every other member). Covered: a group with more
members than slots (eviction with save-first, restore on return), autosave every N with rotation,
swipes/regenerations/continues versus new and edited turns, and a llama-server restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.events import Kind
from kvtui.service import KvService
from tests.conftest import reset_server
from tests.test_proxy import (
    USER,
    Harness,
    group_stop,
    isolated_config,
    make_settings,
    running_proxy,
    st_body,
    st_prompt,
)

__all__ = ["isolated_config"]  # the autouse fixture, shared with test_proxy

MEMBERS = ["Seraphina", "Kael", "Mira", "Brann"]
GROUP_CHAT = "2026-05-03@19h02m11s004ms"


@pytest.fixture(scope="module")
def two_slot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A second real llama-server with only two slots (1024 tokens each)."""
    server = EmbeddedServer(
        save_dir=tmp_path_factory.mktemp("two-slot-saves"), n_slots=2, n_ctx=2048
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def two_slots(two_slot_server: EmbeddedServer) -> EmbeddedServer:
    if not two_slot_server.running:
        two_slot_server.start()
    reset_server(two_slot_server)
    return two_slot_server


class GroupChat:
    """A SillyTavern group chat in progress: its lines grow as members reply."""

    def __init__(self, harness: Harness, members: list[str]) -> None:
        self.harness = harness
        self.members = members
        self.lines: list[tuple[str, str]] = [(USER, "Good evening, everyone. Who keeps watch?")]

    def body(self, speaker: str) -> dict[str, Any]:
        return st_body(st_prompt(speaker, self.lines), group_stop(speaker, self.members))

    async def speak(self, speaker: str) -> dict[str, Any]:
        """The member's reply to the chat so far; it joins the chat like SillyTavern's would."""
        result = await self.harness.complete(self.body(speaker))
        self.lines.append((speaker, result["content"].strip() or "..."))
        return result

    def user_says(self, text: str) -> None:
        self.lines.append((USER, text))


def save_files(server: EmbeddedServer, character: str) -> list[str]:
    assert server.save_dir is not None
    return sorted(p.name for p in server.save_dir.glob(f"*_character_{character}.bin"))


def events(service: KvService, kind: Kind) -> list[str]:
    return [e.message for e in service.events.recent() if e.kind is kind]


async def test_group_with_more_members_than_slots(
    two_slots: EmbeddedServer, tmp_path: Path
) -> None:
    settings = make_settings(two_slots, tmp_path, autosave_every=100)
    async with running_proxy(settings) as h:
        service = h.service
        service.set_current_chat(GROUP_CHAT)
        chat = GroupChat(h, MEMBERS)

        first = await chat.speak("Seraphina")
        kael = await chat.speak("Kael")
        slots = {m: service.book.find(GROUP_CHAT, m) for m in ("Seraphina", "Kael")}
        assert first["id_slot"] == slots["Seraphina"] and kael["id_slot"] == slots["Kael"]
        assert slots["Seraphina"] != slots["Kael"]
        assert not save_files(two_slots, "Seraphina")

        # A third member: the least-used (Seraphina, used longest ago) is saved, then evicted.
        mira = await chat.speak("Mira")
        assert mira["id_slot"] == slots["Seraphina"] == service.book.find(GROUP_CHAT, "Mira")
        assert service.book.find(GROUP_CHAT, "Seraphina") is None
        assert len(save_files(two_slots, "Seraphina")) == 1
        assert any("Evicted Seraphina" in m for m in events(service, Kind.EVICT))

        # Seraphina speaks again: Kael makes room (saved first), her save is restored, and her
        # new prompt reuses the restored cache instead of starting from nothing.
        chat.user_says("Seraphina, what do you think?")
        again = await chat.speak("Seraphina")
        assert again["id_slot"] == slots["Kael"] == service.book.find(GROUP_CHAT, "Seraphina")
        assert save_files(two_slots, "Kael")
        assert any("Restored Seraphina" in m for m in events(service, Kind.AUTOLOAD))
        assert again["timings"]["cache_n"] >= first["tokens_evaluated"] - 1

        # The fourth member evicts Mira; Kael returns to a restored cache of his own.
        await chat.speak("Brann")
        assert save_files(two_slots, "Mira")
        chat.user_says("Kael?")
        back = await chat.speak("Kael")
        assert back["id_slot"] == service.book.find(GROUP_CHAT, "Kael")
        assert back["timings"]["cache_n"] >= kael["tokens_evaluated"] - 1
        residents = {r.character for r in service.book.snapshot()}
        assert residents == {"Brann", "Kael"}


async def test_autosave_every_message_keeps_the_newest_three(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = make_settings(clean_server, tmp_path, autosave_every=1, max_autosaves=3)
    async with running_proxy(settings) as h:
        service = h.service
        chat_id = "Seraphina - 2026-05-03@18h45m46s123ms"
        service.set_current_chat(chat_id)
        chat = GroupChat(h, ["Seraphina"])
        autosaves: list[str] = []
        await chat.speak("Seraphina")
        autosaves += save_files(clean_server, "Seraphina")
        slot = service.book.find(chat_id, "Seraphina")
        assert slot is not None and len(autosaves) == 1, service.events.recent()
        tagged = await service.save_slot(slot, tag="важный момент")
        for turn in range(3):
            chat.user_says(f"Tell me more, part {turn}.")
            before = set(save_files(clean_server, "Seraphina"))
            await chat.speak("Seraphina")
            [new] = set(save_files(clean_server, "Seraphina")) - before
            autosaves.append(new)
        remaining = save_files(clean_server, "Seraphina")
        assert tagged.filename in remaining
        assert sorted(set(remaining) - {tagged.filename}) == sorted(autosaves[1:])
        assert autosaves[0] not in remaining
        assert any("Rotated 1 old autosave" in m for m in events(service, Kind.ROTATE))


async def test_swipes_regenerations_and_continues_are_not_new_messages(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = make_settings(clean_server, tmp_path, autosave_every=100)
    async with running_proxy(settings) as h:
        service = h.service
        chat_id = "Seraphina - 2026-05-03@18h45m46s123ms"
        service.set_current_chat(chat_id)
        chat = GroupChat(h, ["Seraphina"])
        await chat.speak("Seraphina")
        slot = service.book.find(chat_id, "Seraphina")
        assert slot is not None
        await service.save_slot(slot)  # a save exists from here on: a restore would show
        assert service.book.record(slot).messages_since_save == 0

        chat.user_says("Where does the river lead?")
        body = chat.body("Seraphina")
        turn = await h.complete(body)
        record = service.book.record(slot)
        assert (record.messages_since_save, record.usage) == (1, 2)

        # Swipe, then regenerate (the same request on the wire): the live cache is reused
        # (a restore of the older save would leave the new lines to be processed again).
        for _ in range(2):
            swipe = await h.complete(body)
            assert swipe["timings"]["cache_n"] >= turn["tokens_evaluated"] - 1
        # Continue: the same prompt plus the reply so far, without a line break.
        continued = dict(body, prompt=body["prompt"] + " " + swipe["content"].strip())
        more = await h.complete(continued)
        assert more["timings"]["cache_n"] >= turn["tokens_evaluated"] - 1
        record = service.book.record(slot)
        assert (record.messages_since_save, record.usage) == (1, 2)
        assert not events(service, Kind.AUTOLOAD)

        # The user edits their last message and regenerates: that is a changed turn.
        edited = dict(body, prompt=body["prompt"].replace("river lead", "old bridge lead"))
        await h.complete(edited)
        record = service.book.record(slot)
        assert (record.messages_since_save, record.usage) == (2, 3)
        assert not events(service, Kind.AUTOLOAD)


async def test_after_a_server_restart_each_character_restores_its_latest_save(
    two_slots: EmbeddedServer, tmp_path: Path
) -> None:
    settings = make_settings(two_slots, tmp_path, autosave_every=100)
    async with running_proxy(settings) as h:
        service = h.service
        service.set_current_chat(GROUP_CHAT)
        chat = GroupChat(h, MEMBERS[:2])
        before = {m: await chat.speak(m) for m in MEMBERS[:2]}
        saved = [o.character for o in (await service.save_all()).done]
        assert sorted(saved) == ["Kael", "Seraphina"]

        await asyncio.to_thread(two_slots.restart)

        chat.user_says("Did everyone sleep well?")
        for member in MEMBERS[:2]:
            after = await chat.speak(member)
            assert after["id_slot"] == before[member]["id_slot"]
            assert after["timings"]["cache_n"] >= before[member]["tokens_evaluated"] - 1
        assert any("restarted" in m for m in events(service, Kind.CONNECTION))
        restored = events(service, Kind.AUTOLOAD)
        assert len(restored) == 2 and all("Restored" in m for m in restored)


async def test_a_failed_restore_is_logged_and_the_request_goes_through(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = make_settings(clean_server, tmp_path, autosave_every=100)
    async with running_proxy(settings) as h:
        service = h.service
        service.set_current_chat(GROUP_CHAT)
        chat = GroupChat(h, ["Kael"])
        await chat.speak("Kael")
        slot = service.book.find(GROUP_CHAT, "Kael")
        assert slot is not None
        saved = await service.save_slot(slot)
        await service.erase(slot)
        # The save file is damaged on disk: kvtui passes it over (and says so), never sends it.
        assert clean_server.save_dir is not None
        (clean_server.save_dir / saved.filename).write_bytes(b"\0" * 4096)
        chat.user_says("Kael, are you there?")
        result = await chat.speak("Kael")
        assert result["id_slot"] == service.book.find(GROUP_CHAT, "Kael")
        assert result["timings"]["cache_n"] == 0
        assert any(
            ("Not restoring Kael" in m or "Could not restore Kael" in m) and saved.filename in m
            for m in events(service, Kind.AUTOLOAD)
        )
        assert service.store is not None
        assert [e.filename for e in service.store.damaged()] == [saved.filename]


async def test_prompts_are_recorded_and_a_swipe_after_a_kvtui_restart_is_still_a_swipe(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = make_settings(clean_server, tmp_path, autosave_every=100)
    chat_id = "Seraphina - 2026-05-03@18h45m46s123ms"
    async with running_proxy(settings) as h:
        h.service.set_current_chat(chat_id)
        chat = GroupChat(h, ["Seraphina"])
        body = chat.body("Seraphina")
        await h.complete(body)
        recorded = h.service.recorder.last_request(chat_id, "Seraphina")
        assert recorded is not None and recorded.prompt == body["prompt"]
        assert "id_slot" not in recorded.body and recorded.body["stop"] == body["stop"]
        slot = h.service.book.find(chat_id, "Seraphina")
        assert slot is not None
    # kvtui restarts (its slot book and recorded prompts persist); the user swipes.
    async with running_proxy(settings) as h:
        h.service.set_current_chat(chat_id)
        assert h.service.book.find(chat_id, "Seraphina") == slot
        result = await h.complete(body)
        assert result["id_slot"] == slot
        assert result["timings"]["cache_n"] >= result["tokens_evaluated"] - 1
        record = h.service.book.record(slot)
        assert (record.messages_since_save, record.usage) == (1, 1)
