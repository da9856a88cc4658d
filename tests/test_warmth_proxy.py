"""Every loss reason forced through the real proxy and a real llama-server, and seen reported.

The requests are SillyTavern's (``/completion``, ``\\nName:`` tails, group stop strings); kvtui
routes them as it would for a user. Most tests run on a two-slot server *without* the
host-memory prompt cache, so a state kvtui lets go of is really gone; the RAM-aware policy's
tests run on one *with* it (llama-server's default). The last test plays a scripted session and
checks that ``kvtui stats --json`` gives every re-prefilled token a reason and adds up to the
server's own ``prompt_n`` totals (``/metrics``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvtui.cli import main
from kvtui.embedded.server import EmbeddedServer
from kvtui.events import Kind
from kvtui.settings import Settings
from tests.conftest import reset_server
from tests.test_proxy import Harness, card, running_proxy
from tests.test_proxy_routing import GROUP_CHAT, GroupChat, two_slot_server, two_slots

pytestmark = pytest.mark.server

__all__ = ["two_slot_server", "two_slots"]  # fixtures: a two-slot server with its RAM cache
TRIO = ["Seraphina", "Kael", "Mira"]


@pytest.fixture(scope="module")
def no_ram_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """Two slots of 1024 tokens, no host-memory prompt cache (``--cache-ram 0``)."""
    server = EmbeddedServer(
        save_dir=tmp_path_factory.mktemp("no-ram-saves"), n_slots=2, n_ctx=2048, cache_ram_mib=0
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def no_ram(no_ram_server: EmbeddedServer) -> EmbeddedServer:
    if not no_ram_server.running:
        no_ram_server.start()
    reset_server(no_ram_server)
    return no_ram_server


def settings_for(server: EmbeddedServer, tmp_path: Path, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "server_url": server.url,
        "save_dir": server.save_dir,
        "state_dir": tmp_path / "state",
        "autosave_every": 100,
    }
    values.update(kw)
    return Settings(**values)


def booked(settings: Settings) -> list[dict[str, Any]]:
    path = settings.state_dir / "turns.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def drained(h: Harness) -> None:
    await h.proxy.app.extras.ledger.drain()


def messages(h: Harness, kind: Kind) -> list[str]:
    return [e.message for e in h.service.events.recent() if e.kind is kind]


async def prompt_tokens_total(server: EmbeddedServer) -> int:
    async with httpx.AsyncClient(timeout=60) as client:
        text = (await client.get(server.url + "/metrics")).text
    for line in text.splitlines():
        if line.startswith("llamacpp:prompt_tokens_total"):
            return int(float(line.split()[-1]))
    raise AssertionError("no llamacpp:prompt_tokens_total in /metrics")


async def restart(server: EmbeddedServer) -> None:
    await asyncio.to_thread(server.restart)


async def test_evicted_without_a_save(no_ram: EmbeddedServer, tmp_path: Path) -> None:
    settings = settings_for(no_ram, tmp_path, save_dir=None)  # no saves at all
    async with running_proxy(settings) as h:
        h.service.set_current_chat(GROUP_CHAT)
        chat = GroupChat(h, TRIO)
        first = await chat.speak("Seraphina")
        await chat.speak("Kael")
        await chat.speak("Mira")  # Seraphina, used longest ago, is evicted: nothing saves her
        chat.user_says("Seraphina, what now?")
        await chat.speak("Seraphina")
        await drained(h)
    last = booked(settings)[-1]
    assert last["character"] == "Seraphina" and last["reason"] == "evicted_unsaved"
    assert last["losses"] == {"evicted_unsaved": last["lost_tokens"]}
    assert last["lost_tokens"] >= first["tokens_evaluated"] - 4


async def test_server_restart(no_ram: EmbeddedServer, tmp_path: Path) -> None:
    settings = settings_for(no_ram, tmp_path)  # saves on, but none is due in this chat
    async with running_proxy(settings) as h:
        h.service.set_current_chat(GROUP_CHAT)
        chat = GroupChat(h, TRIO)
        first = await chat.speak("Seraphina")
        await restart(no_ram)
        chat.user_says("Are you still there?")
        await chat.speak("Seraphina")
        await drained(h)
    last = booked(settings)[-1]
    assert last["reason"] == "server_restart" and last["restored"] is None
    assert last["lost_tokens"] >= first["tokens_evaluated"] - 4


async def test_chat_switch(no_ram: EmbeddedServer, tmp_path: Path) -> None:
    settings = settings_for(no_ram, tmp_path, save_dir=None)
    async with running_proxy(settings) as h:
        h.service.set_current_chat(GROUP_CHAT)
        party = GroupChat(h, TRIO)
        first = await party.speak("Seraphina")
        await party.speak("Kael")
        await h.service.switch_chat("Tavern brawl")
        tavern = GroupChat(h, ["Brann", "Mira"])
        await tavern.speak("Brann")
        await tavern.speak("Mira")  # the two slots now hold the tavern's characters
        await h.service.switch_chat(GROUP_CHAT)
        party.user_says("Back at the camp, Seraphina?")
        await party.speak("Seraphina")
        await drained(h)
    last = booked(settings)[-1]
    assert (last["chat"], last["character"]) == (GROUP_CHAT, "Seraphina")
    assert last["reason"] == "chat_switch"
    assert last["lost_tokens"] >= first["tokens_evaluated"] - 4


async def test_changed_system_prompt(no_ram: EmbeddedServer, tmp_path: Path) -> None:
    settings = settings_for(no_ram, tmp_path)
    async with running_proxy(settings) as h:
        h.service.set_current_chat(GROUP_CHAT)
        chat = GroupChat(h, TRIO)
        await chat.speak("Seraphina")
        chat.user_says("Tell me about the woods.")
        body = chat.body("Seraphina")
        original = body["prompt"]
        body["prompt"] = original.replace("travelers", "wanderers", 1)  # the card, near the top
        position = original.index("travelers")
        await h.complete(body)
        await drained(h)
    last = booked(settings)[-1]
    assert last["reason"] == "prompt_changed_early"
    assert last["first_diff"] == position
    assert last["lost_tokens"] > 0 and last["new_tokens"] > 0


async def test_fingerprint_identity_is_unsure(no_ram: EmbeddedServer, tmp_path: Path) -> None:
    settings = settings_for(no_ram, tmp_path)
    async with running_proxy(settings) as h:
        h.service.set_current_chat(GROUP_CHAT)
        chat = GroupChat(h, TRIO)
        await chat.speak("Seraphina")  # named by the prompt's tail
        # The same card with no name anywhere: only a fingerprint of its beginning is left.
        nameless = card("Seraphina") + "\n"
        await h.complete({"prompt": nameless, "n_predict": 4, "stream": False})
        await drained(h)
    first, second = booked(settings)[-2:]
    assert first["character"] == "Seraphina"
    assert second["source"] == "fingerprint" and second["character"].startswith("unnamed-")
    assert second["reason"] == "identity_unsure" and second["lost_tokens"] > 0


async def speak(chat: GroupChat, speaker: str, text: str) -> dict[str, Any]:
    """A member's turn whose reply joins the chat as ``text`` (the tiny model's own words are
    random tokens: any of them may look like a new line of the chat)."""
    result = await chat.harness.complete(chat.body(speaker))
    chat.lines.append((speaker, text))
    return result


async def test_older_save_says_how_many_messages_behind(
    no_ram: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(no_ram, tmp_path, autosave_every=2)
    async with running_proxy(settings) as h:
        h.service.set_current_chat(GROUP_CHAT)
        chat = GroupChat(h, TRIO)
        await speak(chat, "Seraphina", "*She smiles.* Welcome to the camp.")
        chat.user_says("And the bridge?")
        await speak(chat, "Seraphina", "Two hours east.")  # her second message: autosaved
        chat.user_says("And the river?")
        await speak(chat, "Seraphina", "High, this time of year.")  # not saved
        slot = h.service.resident_slot(GROUP_CHAT, "Seraphina")
        assert slot is not None
        await h.service.erase(slot)  # her cache is gone; her save is two messages old
        chat.user_says("And then?")
        await speak(chat, "Seraphina", "We wait for dawn.")
        await drained(h)
        slots = h.proxy.app.extras.ledger.slots()
    last = booked(settings)[-1]
    assert last["restored"] and last["reason"] == "older_save"
    assert last["behind_messages"] == 2  # "User: And the river?" and her third reply
    assert any("2 messages behind" in s.label for s in slots)  # the dashboard's data
    state = str(settings.state_dir)
    assert main(["stats", "--turns", "--state-dir", state]) == 0
    text = capsys.readouterr().out
    assert "older_save (2 messages behind)" in text and "2 messages behind in all" in text
    assert main(["stats", "--json", "--state-dir", state]) == 0
    data = json.loads(capsys.readouterr().out)
    older = [r for r in data["summary"]["by_reason"] if r["reason"] == "older_save"]
    assert older[0]["messages_behind"] == 2


async def test_ram_aware_policy_leaves_a_swapped_character_to_memory(
    two_slots: EmbeddedServer, tmp_path: Path
) -> None:
    settings = settings_for(two_slots, tmp_path, skip_restore_when_ram_cached=True)
    async with running_proxy(settings) as h:
        h.service.set_current_chat(GROUP_CHAT)
        chat = GroupChat(h, TRIO)
        first = await chat.speak("Seraphina")
        await chat.speak("Kael")
        await chat.speak("Mira")  # Seraphina is saved, then evicted: the server keeps her too
        chat.user_says("Seraphina, what do you think?")
        again = await chat.speak("Seraphina")
        await drained(h)
        kept = list(booked(settings))[-1]
        said = [e.message for e in h.service.events.recent()]
        assert any("keeps evicted prompts in memory" in m for m in said), said
        assert any("Not restoring Seraphina from disk" in m for m in said), said
        assert not any("Restored Seraphina" in m for m in messages(h, Kind.AUTOLOAD))
        # After a restart memory is empty: the save is read again.
        await restart(two_slots)
        chat.user_says("Kael?")
        await chat.speak("Kael")
        await drained(h)
        said = [e.message for e in h.service.events.recent()]
        assert any("Restored Kael" in m for m in said), said
    assert again["timings"]["cache_n"] >= first["tokens_evaluated"] - 4
    assert kept["restored"] is None and kept["disk_read_bytes"] == 0
    assert kept["lost_tokens"] == 0 and kept["reason"] is None
    after = booked(settings)[-1]
    assert after["character"] == "Kael" and after["restored"]


async def test_save_when_protective_keeps_a_restart_from_costing_more_than_a_reply(
    no_ram: EmbeddedServer, tmp_path: Path
) -> None:
    settings = settings_for(no_ram, tmp_path, save_when_protective=True)  # every 100: seed
    async with running_proxy(settings) as h:
        h.service.set_current_chat(GROUP_CHAT)
        chat = GroupChat(h, TRIO)
        for question in ("Where to?", "How far?", "Why?"):
            await chat.speak("Seraphina")
            await drained(h)  # the prefill speed the policy weighs is measured
            chat.user_says(question)
        saves = [m for m in messages(h, Kind.AUTOSAVE) if m.startswith("Saved Seraphina")]
        await restart(no_ram)
        await chat.speak("Seraphina")
        await drained(h)
    assert len(saves) >= 2  # after her second and third replies, not only every 100 messages
    last = booked(settings)[-1]
    assert last["restored"] and last["lost_tokens"] == 0


async def test_a_session_attributes_every_lost_token_and_adds_up(
    no_ram: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(no_ram, tmp_path, autosave_every=2)
    served: list[dict[str, Any]] = []
    before = await prompt_tokens_total(no_ram)
    async with running_proxy(settings) as h:
        h.service.set_current_chat(GROUP_CHAT)
        chat = GroupChat(h, TRIO)
        for speaker in ("Seraphina", "Kael", "Mira", "Seraphina", "Kael"):
            served.append(await chat.speak(speaker))
            chat.user_says(f"And then, {speaker}?")
        served.append(await h.complete(chat.body("Mira")))  # a swipe-like repeat after Mira
        changed = chat.body("Seraphina")
        changed["prompt"] = changed["prompt"].replace("travelers", "wanderers", 1)
        served.append(await h.complete(changed))
        await drained(h)
        server_side = await prompt_tokens_total(no_ram) - before
        await restart(no_ram)
        for speaker in ("Kael", "Seraphina"):
            served.append(await chat.speak(speaker))
        await drained(h)
        server_side += await prompt_tokens_total(no_ram)  # counted from 0 after the restart
    records = booked(settings)
    assert len(records) == len(served)
    assert sum(r["prompt_n"] for r in records) == server_side
    assert [r["prompt_n"] for r in records] == [s["timings"]["prompt_n"] for s in served]
    for r in records:
        assert r["new_tokens"] + r["lost_tokens"] == r["prompt_n"]
        assert sum(r["losses"].values()) == r["lost_tokens"]
        assert "unattributed" not in r["losses"]
    assert main(["stats", "--json", "--state-dir", str(settings.state_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["prefilled_tokens"] == server_side
    by_reason = sum(r["tokens"] for r in summary["by_reason"])
    assert by_reason == summary["lost_tokens"] == server_side - summary["new_tokens"]
    assert summary["lost_tokens"] > 0 and summary["invariant_holds"]
