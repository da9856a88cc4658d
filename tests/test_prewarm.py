"""Prewarm against the real embedded server and the demo's sample SillyTavern data."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama import LlamaClient
from kvtui.prewarm import Outcome, Progress, PromptChoice, plan_prewarm, prewarm
from kvtui.service import KvService, PromptRecorder
from kvtui.settings import Settings, load_settings
from kvtui.sillytavern import SillyTavernData
from kvtui.sillytavern.sample import copy_sample

GROUP_CHAT = "2026-05-03@19h02m11s004ms"


@pytest.fixture
def st_dir(tmp_path: Path) -> Path:
    return copy_sample(tmp_path / "st")


def make_settings(server: EmbeddedServer, tmp_path: Path, st_dir: Path | None) -> Settings:
    return load_settings(
        tmp_path / "config.toml",
        server_url=server.url,
        save_dir=server.save_dir,
        st_dir=st_dir,
        state_dir=tmp_path / "state",
    )


@pytest.fixture
async def service(
    clean_server: EmbeddedServer, tmp_path: Path, st_dir: Path
) -> AsyncIterator[KvService]:
    async with KvService(make_settings(clean_server, tmp_path, st_dir)) as svc:
        await svc.connect()
        yield svc


@pytest.fixture(scope="module")
def two_slot_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(
        save_dir=tmp_path_factory.mktemp("two-slot-saves"), n_slots=2, n_ctx=32768
    )
    server.start()
    yield server
    server.stop()


def test_plan_defaults_to_unmuted_members(st_dir: Path, tmp_path: Path) -> None:
    plan = plan_prewarm(GROUP_CHAT, SillyTavernData(st_dir), PromptRecorder(tmp_path / "p"))
    names = [m.name for m in plan.members]
    assert len(names) == 4
    muted = [m.name for m in plan.members if m.muted]
    assert len(muted) == 1
    assert set(plan.default_selection()) == set(names) - set(muted)
    for choice in plan.choices.values():
        assert choice.source == "assembled"
        assert choice.prompt is not None and choice.prompt.endswith(f"\n{choice.character}:")


def test_plan_prefers_the_recorded_prompt(st_dir: Path, tmp_path: Path) -> None:
    recorder = PromptRecorder(tmp_path / "p")
    plan = plan_prewarm(GROUP_CHAT, SillyTavernData(st_dir), recorder)
    name = plan.default_selection()[0]
    recorder.record(GROUP_CHAT, name, "exact prompt\nAlex: hi\n" + name + ":", {"stop": []})
    again = plan_prewarm(GROUP_CHAT, SillyTavernData(st_dir), recorder)
    assert again.choices[name].source == "recorded"
    assert again.choices[name].prompt == "exact prompt\nAlex: hi\n" + name + ":"


async def test_warms_the_three_unmuted_members(service: KvService, st_dir: Path) -> None:
    plan = plan_prewarm(GROUP_CHAT, SillyTavernData(st_dir), None)
    steps: list[Progress] = []
    report = await prewarm(
        service, plan.chat, plan.selected(plan.default_selection()), on_progress=steps.append
    )
    warmed = report.with_outcome(Outcome.WARMED)
    assert sorted(r.character for r in warmed) == sorted(plan.default_selection())
    assert report.ok and steps[-1].finished and len(steps[-1].done) == 3
    store = service.require_store()
    store.rescan()
    for result in warmed:
        assert result.filename is not None
        entry = store.get(result.filename)
        assert entry is not None and entry.tag is None
        assert entry.n_saved is not None and entry.n_saved > 0
        # The cache is really there: the same prompt again reuses it.
        slot = service.book.find(plan.chat, result.character)
        assert slot is not None
        prompt = plan.choices[result.character].prompt
        assert prompt is not None
        again = await service.client.completion(prompt, n_predict=1, id_slot=slot)
        assert again.timings.cache_n >= entry.n_saved - 1


async def test_two_slots_three_members_save_before_evict(
    two_slot_server: EmbeddedServer, tmp_path: Path, st_dir: Path
) -> None:
    settings = make_settings(two_slot_server, tmp_path, st_dir)
    async with KvService(settings) as svc:
        await svc.clear_all()
        plan = plan_prewarm(GROUP_CHAT, SillyTavernData(st_dir), None)
        chosen = plan.default_selection()
        report = await prewarm(svc, plan.chat, plan.selected(chosen))
        assert [r.outcome for r in report.results] == [Outcome.WARMED] * 3
        store = svc.require_store()
        store.rescan()
        for name in chosen:
            assert store.latest(plan.chat, name) is not None, name
        evictions = [e for e in svc.events.recent() if e.kind == "evict"]
        assert len(evictions) == 1


async def test_timeout_marks_failed_and_moves_on(
    two_slot_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = make_settings(two_slot_server, tmp_path, None)
    long_prompt = "".join(chr(32 + (i * 7) % 95) for i in range(15000))
    # Only Slowpoke has the short limit: a loaded machine may take over a second for anyone.
    choices = [
        PromptChoice("Slowpoke", long_prompt, "test", timeout=0.5),
        PromptChoice("Quick", "Alex: hi there\nQuick:", "test"),
    ]
    async with KvService(settings) as svc:
        await svc.clear_all()
        report = await prewarm(svc, "timeouts", choices, per_character_timeout=300)
        slow, quick = report.results
        assert slow.character == "Slowpoke" and slow.outcome is Outcome.FAILED
        assert "timed out" in slow.reason
        assert quick.character == "Quick" and quick.outcome is Outcome.WARMED


async def test_cancel_stops_the_server_and_reports(
    two_slot_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = make_settings(two_slot_server, tmp_path, None)
    long_prompt = "".join(chr(32 + (i * 11) % 95) for i in range(15000))
    choices = [
        PromptChoice("Quick", "Alex: hello\nQuick:", "test"),
        PromptChoice("Slowpoke", long_prompt, "test"),
        PromptChoice("Never", "Alex: hello\nNever:", "test"),
    ]
    steps: list[Progress] = []
    slow_started = asyncio.Event()

    def on_progress(step: Progress) -> None:
        steps.append(step)
        if step.current == "Slowpoke":
            slow_started.set()

    async with KvService(settings) as svc:
        await svc.clear_all()
        task = asyncio.create_task(prewarm(svc, "cancel", choices, on_progress=on_progress))
        await asyncio.wait_for(slow_started.wait(), timeout=30)
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        final = steps[-1]
        assert final.finished and final.cancelled
        outcomes = {r.character: r.outcome for r in final.done}
        assert outcomes == {
            "Quick": Outcome.WARMED,
            "Slowpoke": Outcome.CANCELLED,
            "Never": Outcome.CANCELLED,
        }
        async with LlamaClient(two_slot_server.url) as client:
            # The final message waits (bounded) for the server to drop the request; on a loaded
            # machine the bound can pass first, so wait here too before checking it is idle.
            states = await client.slots()
            for _ in range(1200):
                if not any(s.is_processing for s in states):
                    break
                await asyncio.sleep(0.1)
                states = await client.slots()
            assert not any(s.is_processing for s in states)


def test_headless_prewarm(clean_server: EmbeddedServer, tmp_path: Path, st_dir: Path) -> None:
    env = dict(os.environ)
    env["KVTUI_CONFIG"] = str(tmp_path / "config.toml")
    env["KVTUI_STATE_DIR"] = str(tmp_path / "state")
    base = [
        sys.executable, "-m", "kvtui.cli", "prewarm", "--server", clean_server.url,
        "--save-dir", str(clean_server.save_dir), "--st-dir", str(st_dir),
    ]  # fmt: skip
    proc = subprocess.run(
        [*base, "--chat", GROUP_CHAT, "--json"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert [r["outcome"] for r in data["results"]] == ["warmed"] * 3
    assert "3 warmed" in proc.stderr
    proc = subprocess.run(
        [*base, "--chat", "no such chat"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no such chat" in proc.stderr
    proc = subprocess.run(
        [*base, "--chat", GROUP_CHAT, "--character", "Nobody"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Nobody" in proc.stderr


async def test_warmed_members_answer_from_cache_through_the_proxy(
    service: KvService, st_dir: Path
) -> None:
    """After prewarm, each member's next SillyTavern request through the proxy hits its cache."""
    import httpx

    from kvtui.proxy.run import ProxyServer

    st_data = SillyTavernData(st_dir)
    plan = plan_prewarm(GROUP_CHAT, st_data, None)
    chosen = plan.default_selection()
    report = await prewarm(service, plan.chat, plan.selected(chosen))
    assert report.ok
    user = st_data.user_name()
    names = [m.name for m in plan.members]
    proxy = ProxyServer(service, host="127.0.0.1", port=0)
    await proxy.start()
    try:
        async with httpx.AsyncClient(base_url=proxy.url, timeout=60) as http:
            for result in report.with_outcome(Outcome.WARMED):
                prompt = plan.choices[result.character].prompt
                stop = [f"\n{user}:"] + [f"\n{n}:" for n in names if n != result.character]
                body = {
                    "prompt": prompt,
                    "n_predict": 8,
                    "stop": stop,
                    "cache_prompt": True,
                    "stream": False,
                }
                resp = await http.post("/completion", json=body)
                assert resp.status_code == 200, resp.text
                timings = resp.json()["timings"]
                assert timings["cache_n"] >= result.tokens - 2, (result.character, timings)
                await proxy.app.settled()
    finally:
        await proxy.stop()
