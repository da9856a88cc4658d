"""The Memory screen driven by keys against the real server and the sample SillyTavern data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input, OptionList, Select, TextArea

from kvtui.embedded.server import EmbeddedServer
from kvtui.memory.preview import PreviewState
from kvtui.memory.prompt import Preset, preset_library
from kvtui.memory.settings import MemorySettings, memory_dir
from kvtui.service import KvService
from kvtui.settings import load_settings
from kvtui.sillytavern.sample import SOLO_CHAT_ID, copy_sample
from kvtui.tui.app import make_app
from kvtui.tui.screens.memory import MemoryScreen

SIZE = (120, 45)
SMALL = MemorySettings(
    memory_slot=3,
    memory_n_predict=450,
    memory_max_title_chars=30,
    memory_max_content_chars=120,
    memory_max_keywords=4,
)


async def wait_until(pilot: Pilot[Any], predicate: Callable[[], bool], what: str) -> None:
    """Let the app run until ``predicate`` holds (bounded generously for a loaded machine)."""
    for _ in range(3000):
        if predicate():
            return
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_memory_screen_run_edit_accept(clean_server: EmbeddedServer, tmp_path: Path) -> None:
    st_dir = copy_sample(tmp_path / "st")
    settings = load_settings(
        tmp_path / "config.toml",
        server_url=clean_server.url,
        save_dir=clean_server.save_dir,
        st_dir=st_dir,
        state_dir=tmp_path / "state",
    )
    preset_library(memory_dir(settings.state_dir)).add(
        Preset(name="Tiny", prompt="Write a memory of the scene below as JSON.")
    )
    service = KvService(settings)
    app = make_app(settings, service=service)
    book = st_dir / "worlds" / f"kvtui - {SOLO_CHAT_ID}.json"
    async with app.run_test(size=SIZE) as pilot:
        screen = MemoryScreen(service, SOLO_CHAT_ID, memory_settings=SMALL)
        await app.push_screen(screen)
        await wait_until(pilot, lambda: screen.plan is not None, "the first plan")
        screen.query_one("#memory-preset", Select).value = "Tiny"
        range_input = screen.query_one("#memory-range", Input)
        range_input.value = "0-2"
        range_input.focus()
        await pilot.press("enter")

        def planned() -> bool:
            plan = screen.plan
            return plan is not None and plan.preset.name == "Tiny" and plan.scene.end == 2

        await wait_until(pilot, planned, "the plan for 0-2 with Tiny")
        await wait_until(
            pilot,
            lambda: "tokens." in str(screen.query_one("#memory-plan").render()),
            "the token count",
        )

        # Run, then discard the preview: nothing is written.
        await pilot.press("ctrl+r")
        await wait_until(
            pilot,
            lambda: screen.preview is not None and screen.preview.state is PreviewState.READY,
            "a preview",
        )
        await pilot.press("escape")
        assert screen.preview is None and "Discarded" in screen.status_text
        assert not book.exists()

        # Run again, edit the text, accept: the edit is saved.
        await pilot.press("ctrl+r")
        await wait_until(
            pilot,
            lambda: screen.preview is not None and screen.preview.state is PreviewState.READY,
            "a second preview",
        )
        screen.query_one("#memory-content", TextArea).text = "Seraphina healed Alex in her glade."
        screen.query_one("#memory-keywords", Input).value = "glade, Alex"
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: screen.saved is not None, "the save")
        entry = next(iter(json.loads(book.read_text(encoding="utf-8"))["entries"].values()))
        assert entry["content"] == "Seraphina healed Alex in her glade."
        assert entry["key"] == ["glade", "Alex"]
        assert "Chat Lore" in screen.status_text

        existing = screen.query_one("#memory-existing", OptionList)
        await wait_until(
            pilot,
            lambda: (
                existing.option_count == 1
                and "[001]" in str(existing.get_option_at_index(0).prompt)
            ),
            "the memory list",
        )
        await wait_until(
            pilot,
            lambda: screen.plan is not None and screen.plan.scene.start == 3,
            "the next default range",
        )
        await pilot.press("escape")
        assert not isinstance(app.screen, MemoryScreen)


async def test_memory_screen_cancel_restores_the_borrowed_slot(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    """Esc during a borrowed-slot job: the job is dropped, the parked cache comes back, and
    nothing is written. The cancel is triggered from the job's own progress (the same action
    Esc runs), so it lands while the job is generating whatever the machine's speed."""
    from kvtui.llama.client import LlamaClient
    from kvtui.store.names import is_private_name

    st_dir = copy_sample(tmp_path / "st")
    settings = load_settings(
        tmp_path / "config.toml",
        server_url=clean_server.url,
        save_dir=clean_server.save_dir,
        st_dir=st_dir,
        state_dir=tmp_path / "state",
    )
    assert clean_server.save_dir is not None
    async with LlamaClient(clean_server.url) as client:
        for slot in range(4):
            await client.completion("Kael: we move at first light. " * (slot + 3), id_slot=slot)
        before = {s.id: s.n_prompt_tokens for s in await client.slots()}
    borrowed = SMALL.model_copy(update={"memory_slot": None})
    preset_library(memory_dir(settings.state_dir)).add(
        Preset(name="Tiny", prompt="Write a memory of the scene below as JSON.")
    )
    service = KvService(settings)
    app = make_app(settings, service=service)
    async with app.run_test(size=SIZE) as pilot:
        screen = MemoryScreen(service, SOLO_CHAT_ID, memory_settings=borrowed)
        await app.push_screen(screen)
        await wait_until(pilot, lambda: screen.plan is not None, "the first plan")
        screen.query_one("#memory-preset", Select).value = "Tiny"
        screen.query_one("#memory-range", Input).value = "0-2"
        screen.query_one("#memory-range", Input).focus()
        await pilot.press("enter")
        await wait_until(
            pilot,
            lambda: screen.plan is not None and screen.plan.preset.name == "Tiny",
            "the Tiny plan",
        )
        post = screen._post_progress
        parked: list[str] = []

        def cancel_when_generating(step: Any) -> None:
            post(step)
            if step.stage == "parking":
                parked.append(step.detail)
            if step.stage == "generating" and step.tokens >= 16 and screen.running:
                screen.action_cancel_or_close()

        screen._post_progress = cancel_when_generating  # type: ignore[method-assign]
        await pilot.press("ctrl+r")
        await wait_until(
            pilot, lambda: not screen.running and "Cancelled" in screen.status_text, "the cancel"
        )
        assert parked
        assert screen.preview is not None and screen.preview.accepted is None
        await pilot.press("escape")
    async with LlamaClient(clean_server.url) as client:
        slots = await client.slots()
        assert {s.id: s.n_prompt_tokens for s in slots} == before
        assert not any(s.is_processing for s in slots)
    assert not [p for p in clean_server.save_dir.iterdir() if is_private_name(p.name)]
    assert not (st_dir / "worlds").exists()


async def test_memory_screen_runs_the_after_memory_side_prompts(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    """Accept a memory: each enabled after-memory template runs on its scene, its reply in the
    shared preview (accept one, cancel the other), each outcome notified and logged."""
    from kvtui.sideprompts.templates import template_library
    from kvtui.tui.screens.text_preview import TextPreviewScreen
    from tests.sideprompt_helpers import tiny

    st_dir = copy_sample(tmp_path / "st")
    settings = load_settings(
        tmp_path / "config.toml",
        server_url=clean_server.url,
        save_dir=clean_server.save_dir,
        st_dir=st_dir,
        state_dir=tmp_path / "state",
    )
    preset_library(memory_dir(settings.state_dir)).add(
        Preset(name="Tiny", prompt="Write a memory of the scene below as JSON.")
    )
    library = template_library(settings.state_dir)
    for name in library.names():
        library.delete(name)
    library.add(tiny("Alpha", after_memory=True))
    library.add(tiny("Beta", after_memory=True))
    library.add(tiny("Off", after_memory=True).model_copy(update={"enabled": False}))
    library.add(tiny("By hand"))
    service = KvService(settings)
    app = make_app(settings, service=service)
    book = st_dir / "worlds" / f"kvtui - {SOLO_CHAT_ID}.json"
    async with app.run_test(size=SIZE) as pilot:
        screen = MemoryScreen(service, SOLO_CHAT_ID, memory_settings=SMALL, side_previews=True)
        await app.push_screen(screen)
        await wait_until(pilot, lambda: screen.plan is not None, "the first plan")
        screen.query_one("#memory-preset", Select).value = "Tiny"
        screen.query_one("#memory-range", Input).value = "0-2"
        screen.query_one("#memory-range", Input).focus()
        await pilot.press("enter")
        await wait_until(
            pilot,
            lambda: screen.plan is not None and screen.plan.preset.name == "Tiny",
            "the Tiny plan",
        )
        await pilot.press("ctrl+r")
        await wait_until(
            pilot,
            lambda: screen.preview is not None and screen.preview.state is PreviewState.READY,
            "a preview",
        )
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: screen.saved is not None, "the memory's save")

        def modal() -> TextPreviewScreen | None:
            top = app.screen
            return top if isinstance(top, TextPreviewScreen) and top.status_text else None

        await wait_until(pilot, lambda: modal() is not None, "the first side prompt")
        first = modal()
        assert first is not None and screen.after_running
        assert screen.query_one("#memory-run").disabled  # one job runner: Run waits
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: modal() not in (None, first), "the second side prompt")
        await pilot.press("escape")
        await wait_until(pilot, lambda: not screen.after_running, "the batch")
        assert app.screen is screen
        assert screen.after is not None
        outcomes = {o.template: o.status for o in screen.after.outcomes}
        assert sorted(outcomes.values()) == ["cancelled", "saved"] and set(outcomes) == {
            "Alpha", "Beta"
        }  # fmt: skip
        assert "Side prompts: 1 updated, 0 failed, 1 cancelled." in screen.status_text
        entries = json.loads(book.read_text(encoding="utf-8"))["entries"].values()
        kinds = sorted(e["kvtui_kind"] for e in entries)
        assert kinds == ["memory", "sideprompt"]
        logged = [e.message for e in service.events.recent() if "After memory" in e.message]
        assert len(logged) == 2 and any("✓" in m for m in logged)
        await pilot.press("escape")
