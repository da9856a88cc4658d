"""Side-prompt runs against the real embedded llama-server and a SillyTavern-shaped data dir.

A tracker entry is updated in place; after-memory runs every enabled template once per memory;
interval triggers fire exactly at the threshold, once; manual runs work headless (the CLI
function), with and without a range; and no character loses its cache to side-prompt jobs (a
character's next-turn ``cache_n`` equals the no-job control), a batch of four included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama.client import LlamaClient
from kvtui.memory.lorebook import Lorebook
from kvtui.memory.settings import MemorySettings
from kvtui.settings import Settings
from kvtui.sideprompts.cli import sideprompt_command
from kvtui.sideprompts.interval import IntervalTrigger
from kvtui.sideprompts.service import SidePromptService
from kvtui.sillytavern.sample import copy_sample
from tests.sideprompt_helpers import CHAT, UTILITY, add_messages, make_service, only, tiny


@pytest.fixture
def server(strict_server: EmbeddedServer) -> EmbeddedServer:
    return strict_server  # the shared server without a RAM cache: a lost cache shows


@pytest.fixture
def st_dir(tmp_path: Path) -> Path:
    return copy_sample(tmp_path / "st")


@pytest.fixture
async def client(server: EmbeddedServer) -> AsyncIterator[LlamaClient]:
    async with LlamaClient(server.url, save_dir=server.save_dir) as c:
        yield c


def book(service: SidePromptService) -> Lorebook:
    ref = service.find_chat(CHAT)
    return Lorebook.open(service.book_for(ref)[1], CHAT)


async def test_tracker_entry_updated_in_place_over_three_runs(
    client: LlamaClient, st_dir: Path, tmp_path: Path
) -> None:
    service = make_service(client, st_dir, tmp_path / "state")
    only(service, tiny("Tracker"))
    contents = []
    for n in range(3):
        add_messages(st_dir, 1)
        outcome = await service.run_manual("Tracker", CHAT)
        assert outcome.status == "saved", outcome.message
        entries = [e for e in book(service).entries.values()]
        assert len(entries) == 1
        entry = entries[0]
        assert entry["comment"] == "Tracker (kvtui SidePrompt)"
        assert entry["uid"] == outcome.uid == 0
        assert entry["content"] == outcome.text
        contents.append(entry["content"])
        if n:
            prompt = service.plan("Tracker", CHAT, "0-3").prompt.text
            assert entry["content"] in prompt  # the current state goes into the next prompt
    assert len(set(contents)) == 3, contents
    assert entry["vectorized"] is True and entry["position"] == 0  # the template's settings


async def test_after_memory_runs_every_enabled_template_once(
    client: LlamaClient, st_dir: Path, tmp_path: Path
) -> None:
    service = make_service(client, st_dir, tmp_path / "state")
    templates = [tiny(f"T{n}", after_memory=True) for n in range(3)]
    off = tiny("Off", after_memory=True).model_copy(update={"enabled": False})
    only(service, *templates, off, tiny("Manual only"))
    for start, end in [(0, 2), (3, 5)]:
        outcomes = await service.run_after_memory(CHAT, start, end)
        assert sorted(o.template for o in outcomes) == ["T0", "T1", "T2"]
        assert all(o.status == "saved" and (o.start, o.end) == (start, end) for o in outcomes)
        titles = sorted(e["comment"] for e in book(service).entries.values())
        assert titles == [f"T{n} (kvtui SidePrompt)" for n in range(3)]
        assert all(e["kvtui_end"] == end for e in book(service).entries.values())


async def test_interval_fires_exactly_at_the_threshold_once(
    client: LlamaClient, st_dir: Path, tmp_path: Path
) -> None:
    service = make_service(client, st_dir, tmp_path / "state")
    only(service, tiny("Every3", interval=3))
    service.checkpoints.set(CHAT, "every3", 5)  # the sample chat's newest message
    waits: list[int] = []

    async def debounce() -> None:
        waits.append(1)

    trigger = IntervalTrigger(service, debounce=debounce)
    fired_at: list[int] = []
    for n in range(1, 8):
        newest = add_messages(st_dir, 1)
        add_messages(st_dir, 1, system=True)  # hidden messages do not count
        assert await trigger.observe(CHAT) == (1 if n in (3, 6) else 0)
        assert await trigger.observe(CHAT) == 0  # a second look while pending adds nothing
        await trigger.drain()
        if len(trigger.outcomes) > len(fired_at):
            fired_at.append(n)
            assert trigger.outcomes[-1].status == "saved", trigger.outcomes[-1].message
            assert trigger.outcomes[-1].end == newest
    assert fired_at == [3, 6]
    assert len(waits) == 2 and len(trigger.outcomes) == 2
    assert service.checkpoints.get(CHAT, "every3") == trigger.outcomes[-1].end


async def test_interval_follows_the_live_chat(
    client: LlamaClient, st_dir: Path, tmp_path: Path
) -> None:
    service = make_service(client, st_dir, tmp_path / "state")
    only(service, tiny("Every2", interval=2))
    service.checkpoints.set(CHAT, "every2", 5)
    chat_file = st_dir / "chats" / "Seraphina" / f"{CHAT}.jsonl"
    chat_file.touch()  # the solo chat is the active one
    trigger = IntervalTrigger(service, debounce=_no_wait)
    stop = asyncio.Event()
    watching = asyncio.create_task(trigger.watch(stop, force_polling=True))
    try:
        # SillyTavern keeps writing; the watcher is ready at some point: wait on the outcome.
        for _ in range(240):
            if trigger.outcomes:
                break
            add_messages(st_dir, 1)
            await asyncio.sleep(0.5)
        assert trigger.outcomes and trigger.outcomes[0].status == "saved", trigger.outcomes
        assert trigger.outcomes[0].start == 6
    finally:
        stop.set()
        await watching


async def _no_wait() -> None:
    return None


def _args(*words: str, chat: str | None = CHAT, yes: bool = True) -> argparse.Namespace:
    from kvtui.sideprompts.cli import arguments

    parser = argparse.ArgumentParser()
    arguments(parser)
    argv = [*words, *(["--chat", chat] if chat else []), *(["--yes"] if yes else []), "--json"]
    return parser.parse_args(argv)


def test_manual_run_headless_with_and_without_range(
    server: EmbeddedServer, st_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    settings = Settings(server_url=server.url, st_dir=st_dir, state_dir=state,
                        save_dir=server.save_dir)  # fmt: skip
    settings_with_slot = _WithSlot(settings)
    assert sideprompt_command(settings, _args("add", "Mine", "--prompt", "Track it.")) == 0
    assert sideprompt_command(settings, _args("edit", "Mine", "--previous", "0")) == 0
    capsys.readouterr()
    assert sideprompt_command(settings_with_slot, _args("Mine", "1-3")) == 0  # type: ignore[arg-type]
    ranged = json.loads(capsys.readouterr().out)
    assert ranged["status"] == "saved" and (ranged["start"], ranged["end"]) == (1, 3)
    assert sideprompt_command(settings_with_slot, _args("Mine")) == 0  # type: ignore[arg-type]
    since = json.loads(capsys.readouterr().out)
    assert since["status"] == "saved" and (since["start"], since["end"]) == (4, 5)
    assert sideprompt_command(settings, _args("edit", "Mine", "--manual", "off")) == 0
    capsys.readouterr()
    assert sideprompt_command(settings_with_slot, _args("Mine", "0-2")) == 1  # type: ignore[arg-type]
    assert "does not allow manual runs" in capsys.readouterr().err


class _WithSlot:
    """``Settings`` plus memory_slot/memory_n_predict (until the lead merges MemorySettings)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.memory_slot = 3
        self.memory_n_predict = 64

    def __getattr__(self, name: str) -> object:
        return getattr(self._settings, name)


# -- KV safety --------------------------------------------------------------------------------


def character_prompt(name: str, length: int) -> str:
    text = f"{name}: the forest party walks by the river in the light of the night. "
    return (text * (length // len(text) + 1))[:length]


async def turn(client: LlamaClient, slot: int, prompt: str) -> tuple[str, int]:
    result = await client.completion(
        prompt, n_predict=12, id_slot=slot, top_k=1, temperature=0.0, seed=7
    )
    return result.content, result.timings.cache_n


async def next_turn_cache_n(client: LlamaClient, slot: int, prompt: str) -> int:
    """The control: a character's second turn with nothing in between."""
    first, _ = await turn(client, slot, prompt)
    _, cache_n = await turn(client, slot, prompt + first + " and then Mira laughed.")
    return cache_n


@pytest.mark.parametrize("mode", ["utility", "borrowed"])
async def test_no_character_loses_cache_to_a_batch_of_four(
    mode: str, client: LlamaClient, st_dir: Path, tmp_path: Path
) -> None:
    settings = UTILITY if mode == "utility" else MemorySettings(memory_n_predict=64)
    service = make_service(client, st_dir, tmp_path / "state", settings)
    only(service, *(tiny(f"B{n}", after_memory=True) for n in range(4)))
    prompts = {0: character_prompt("Seraphina", 300), 1: character_prompt("Kael", 500)}
    baseline = {}
    for slot, prompt in prompts.items():
        baseline[slot] = await next_turn_cache_n(client, slot, prompt)
        await client.erase(slot)
    firsts = {slot: (await turn(client, slot, prompt))[0] for slot, prompt in prompts.items()}
    outcomes = await service.run_after_memory(CHAT, 0, 5)
    assert [o.status for o in outcomes] == ["saved"] * 4, "\n".join(o.message for o in outcomes)
    assert {o.mode for o in outcomes} == {mode}
    if mode == "utility":
        assert {o.slot for o in outcomes} == {3}
    for slot, prompt in prompts.items():
        follow_up = prompt + firsts[slot] + " and then Mira laughed."
        _, with_jobs = await turn(client, slot, follow_up)
        assert baseline[slot] >= len(await client.tokenize(prompt))
        assert with_jobs == baseline[slot], (slot, with_jobs, baseline[slot])


async def test_after_memory_follows_a_real_memory_save(
    client: LlamaClient, st_dir: Path, tmp_path: Path
) -> None:
    """What the memory workflow does: save a memory, then ``run_after_memory`` on its scene."""
    from kvtui.memory.jobs import JobRunner
    from kvtui.memory.prompt import Preset
    from kvtui.memory.workflow import MemoryWorkflow
    from kvtui.sillytavern import SillyTavernData

    small = MemorySettings(memory_slot=3, memory_n_predict=450, memory_max_title_chars=30,
                           memory_previous=0,
                           memory_max_content_chars=120, memory_max_keywords=4)  # fmt: skip
    state = tmp_path / "state"
    flow = MemoryWorkflow(SillyTavernData(st_dir), state, small, JobRunner(client, small))
    flow.presets.add(Preset(name="Tiny", prompt="Write a memory of the scene below as JSON."))
    service = make_service(client, st_dir, state)
    only(service, tiny("Plots", after_memory=True).model_copy(update={"previous_memories": 2}))
    for span in ("0-2", "3-5"):
        plan = flow.plan(CHAT, span, "Tiny")
        preview = await flow.generate(plan)
        preview.accept()
        saved = await flow.save(plan, preview)
        outcomes = await service.run_after_memory(CHAT, plan.scene.start, plan.scene.end)
        assert [(o.template, o.status) for o in outcomes] == [("Plots", "saved")]
        run = service.plan("Plots", CHAT, span=(plan.scene.start, plan.scene.end))
        assert saved.stored.memory.content not in run.prompt.text  # the scene, not context
    entries = [e for e in book(service).entries.values()]
    assert sorted(e["kvtui_kind"] for e in entries) == ["memory", "memory", "sideprompt"]
    last = service.plan("Plots", CHAT, span=(4, 5))
    assert book(service).memories()[0].memory.content in last.prompt.text  # earlier memory


class Recording(httpx.AsyncBaseTransport):
    """The real network transport, keeping each request's path and JSON body."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.bodies: list[tuple[str, dict[str, object]]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            self.bodies.append((request.url.path, json.loads(request.content or b"{}")))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_template_runs_on_its_own_server_and_model(
    client: LlamaClient, server: EmbeddedServer, st_dir: Path, tmp_path: Path
) -> None:
    """The override is the job runner's second-server mode: the main client sends nothing."""
    main = Recording()
    async with LlamaClient(server.url, save_dir=server.save_dir, transport=main) as watched:
        service = make_service(watched, st_dir, tmp_path / "state")
        own = tiny("Elsewhere").model_copy(update={"server_url": server.url, "model": "tiny-m"})
        only(service, own, tiny("Here"))
        recorded = Recording()
        service.override_transport = recorded
        outcome = await service.run_manual("Elsewhere", CHAT, "0-3")
        assert outcome.status == "saved" and outcome.mode == "server", outcome.message
        assert outcome.slot is None  # the other server picks its slot
        assert main.bodies == []
        completions = [body for path, body in recorded.bodies if path == "/completion"]
        assert len(completions) == 1 and completions[0]["model"] == "tiny-m"
        assert "id_slot" not in completions[0]
        here = await service.run_manual("Here", CHAT, "0-3")
        assert here.mode == "utility" and here.slot == 3
        assert [b.get("id_slot") for p, b in main.bodies if p == "/completion"] == [3]
        assert all("model" not in b for _, b in main.bodies)
    exported = json.loads(service.library.export(["Elsewhere"]))["items"][0]
    assert (exported["server_url"], exported["model"]) == (server.url, "tiny-m")
    service.library.import_json(service.library.export(["Elsewhere"]))
    copy = service.library.get("Elsewhere (2)")
    assert (copy.server_url, copy.model) == (server.url, "tiny-m")
