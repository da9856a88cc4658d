"""Side-prompt templates, prompts, previews and refusals, on real files (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvtui.llama.client import LlamaClient
from kvtui.memory.library import LibraryError
from kvtui.memory.preview import PreviewError, PreviewState, TextPreview
from kvtui.memory.scene import SceneError
from kvtui.sideprompts.service import SidePromptRefused
from kvtui.sideprompts.templates import (
    LoreMode,
    LoreSettings,
    SidePrompt,
    builtin_templates,
    template_library,
)
from kvtui.sillytavern.sample import copy_sample
from tests.sideprompt_helpers import CHAT, add_messages, make_service, only, tiny


def test_builtins_are_the_four_trackers(tmp_path: Path) -> None:
    library = template_library(tmp_path)
    assert library.names() == ["Plot points", "Status", "Cast of characters", "Assessment"]
    assert all(t.builtin and t.prompt for t in library.all())
    assert library.get("status").title == "Status (kvtui SidePrompt)"


def test_recreate_builtins_leaves_user_templates_alone(tmp_path: Path) -> None:
    library = template_library(tmp_path)
    library.add(tiny("Mine"))
    library.update("Status", prompt="my own status prompt")
    library.delete("Cast of characters")
    library.reset_builtins()
    names = library.names()
    assert names[:4] == ["Plot points", "Status", "Cast of characters", "Assessment"]
    assert library.get("Status").prompt == builtin_templates()[1].prompt
    assert library.get("Mine").prompt == tiny("Mine").prompt and not library.get("Mine").builtin


def test_import_of_an_export_renames_and_never_overwrites(tmp_path: Path) -> None:
    library = template_library(tmp_path)
    library.add(tiny("Mine"))
    exported = library.export()
    library.update("Mine", prompt="changed after export")
    before = {t.name: t for t in library.all()}
    added = library.import_json(exported)
    assert [t.name for t in added] == [
        "Plot points (2)", "Status (2)", "Cast of characters (2)", "Assessment (2)", "Mine (2)"
    ]  # fmt: skip
    after = {t.name: t for t in library.all()}
    for name, template in before.items():
        assert after[name] == template  # nothing overwritten
    assert after["Mine (2)"].prompt == tiny("Mine").prompt
    assert not after["Plot points (2)"].builtin
    with pytest.raises(LibraryError):
        library.import_json("not json")
    assert {t.name for t in library.all()} == set(after)


def test_template_fields_are_checked() -> None:
    with pytest.raises(ValueError):
        SidePrompt(name="x", prompt="y", previous_memories=8)
    with pytest.raises(ValueError):
        LoreSettings(position=4)
    lore = LoreSettings(mode=LoreMode.BLUE, position=2, order_value=7)
    entry: dict[str, object] = {}
    lore.entry_settings().apply(entry, None)
    assert entry["constant"] is True and entry["vectorized"] is False
    assert entry["position"] == 2 and entry["order"] == 7 and entry["preventRecursion"] is True


def test_prompt_puts_the_fixed_parts_first(tmp_path: Path) -> None:
    st_dir = copy_sample(tmp_path / "st")
    service = make_service(LlamaClient("http://127.0.0.1:9"), st_dir, tmp_path / "state")
    template = tiny("T").model_copy(update={"response_format": "One line."})
    first = service.plan(template, CHAT, "0-3")
    add_messages(st_dir, 2)
    second = service.plan(template, CHAT, "2-7")
    assert first.prompt.fixed == second.prompt.fixed
    assert first.prompt.text.startswith(first.prompt.fixed)
    assert second.prompt.text.startswith(first.prompt.fixed)
    text = first.prompt.text
    assert text.index("RESPONSE FORMAT") < text.index("CURRENT STATE") < text.index("NEW MESSAGES")
    assert "Seraphina and Alex" in text and "(none yet)" in text


def test_manual_run_refused_when_not_allowed(tmp_path: Path) -> None:
    st_dir = copy_sample(tmp_path / "st")
    service = make_service(LlamaClient("http://127.0.0.1:9"), st_dir, tmp_path / "state")
    only(service, tiny("Auto only", manual=False, after_memory=True))
    import asyncio

    with pytest.raises(SidePromptRefused, match="does not allow manual runs"):
        asyncio.run(service.run_manual("Auto only", CHAT))
    with pytest.raises(LibraryError, match="No side prompt named"):
        asyncio.run(service.run_manual("Nope", CHAT))
    assert not (st_dir / "worlds").exists()


def test_no_range_means_since_the_checkpoint(tmp_path: Path) -> None:
    st_dir = copy_sample(tmp_path / "st")
    service = make_service(LlamaClient("http://127.0.0.1:9"), st_dir, tmp_path / "state")
    template = tiny("T")
    run = service.plan(template, CHAT)
    assert (run.scene.start, run.scene.end) == (0, 5)
    service.advance(run)
    with pytest.raises(SceneError, match="No new messages"):
        service.plan(template, CHAT)
    newest = add_messages(st_dir, 3)
    run = service.plan(template, CHAT)
    assert (run.scene.start, run.scene.end) == (6, newest)
    service.window = 2
    assert service.plan(template, CHAT).scene.start == newest - 1  # capped to the window


def test_text_preview_states() -> None:
    preview = TextPreview()
    preview.offer("<think>hmm</think>\n  The state.  ")
    assert preview.state is PreviewState.READY and preview.text == "The state."
    preview.edit("Edited state")
    assert preview.accept() == "Edited state" and preview.edited
    with pytest.raises(PreviewError):
        preview.cancel()
    empty = TextPreview()
    empty.offer("   ")
    assert empty.state is PreviewState.FAILED and empty.accepted is None
    empty.cancel()
    assert empty.accepted is None


def test_templates_file_is_plain_json(tmp_path: Path) -> None:
    library = template_library(tmp_path)
    library.add(tiny("Mine"))
    data = json.loads(library.path.read_text(encoding="utf-8"))
    assert [i["name"] for i in data["items"]][-1] == "Mine"


def test_cli_manages_templates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import kvtui.sideprompts.cli  # noqa: F401 - registers ``kvtui sideprompt``
    from kvtui.cli import main

    monkeypatch.setenv("KVTUI_CONFIG", str(tmp_path / "config.toml"))
    state = ["--state-dir", str(tmp_path / "state")]
    out = tmp_path / "export.json"

    def run(*argv: str) -> int:
        return main(["sideprompt", *argv, *state])

    assert run("add", "Mine", "--prompt", "Track it.", "--interval", "5", "--mode", "blue") == 0
    assert run("export", "-o", str(out)) == 0
    assert run("import", str(out)) == 0
    assert "Imported 5" in capsys.readouterr().out
    assert run("disable", "Mine") == 0
    assert run("edit", "Mine (2)", "--interval", "off", "--manual", "off") == 0
    assert run("list") == 0
    listing = capsys.readouterr().out
    assert "[off] Mine: every 5, manual" in listing
    assert "[on ] Mine (2): no triggers" in listing
    assert run("recreate-builtins") == 0
    library = template_library(tmp_path / "state")
    mine = library.get("Mine")
    assert mine.lore.mode is LoreMode.BLUE and mine.triggers.interval == 5
    capsys.readouterr()
    assert run("show", "Nope") == 1
    assert 'No side prompt named "Nope"' in capsys.readouterr().err
    assert run("Mine") == 2  # no --chat
    assert "--chat" in capsys.readouterr().err

    # The optional server (and model) of a template.
    assert run("edit", "Mine", "--model", "big") == 1
    assert "set server_url too" in capsys.readouterr().err
    assert run("edit", "Mine", "--server-url", "ftp://x") == 1
    assert "http://" in capsys.readouterr().err
    assert run("edit", "Mine", "--server-url", "http://127.0.0.1:9/", "--model", "big") == 0
    assert run("list") == 0
    assert "[off] Mine: every 5, manual @ http://127.0.0.1:9 (big)" in capsys.readouterr().out
    assert run("export", "Mine", "-o", str(out)) == 0
    assert json.loads(out.read_text())["items"][0]["model"] == "big"
    assert run("edit", "Mine", "--server-url", "") == 0
    mine = template_library(tmp_path / "state").get("Mine")
    assert (mine.server_url, mine.model) == (None, None)


async def test_concurrent_saves_into_one_book_lose_nothing(tmp_path: Path) -> None:
    import asyncio

    st_dir = copy_sample(tmp_path / "st")
    service = make_service(LlamaClient("http://127.0.0.1:9"), st_dir, tmp_path / "state")
    runs = [service.plan(tiny(f"T{n}"), CHAT, "0-5") for n in range(12)]

    async def save(n: int) -> None:
        preview = TextPreview()
        preview.offer(f"state {n}")
        preview.accept()
        await service.save(runs[n], preview)

    await asyncio.gather(*(save(n) for n in range(12)))
    book = json.loads(runs[0].book_path.read_text(encoding="utf-8"))
    contents = sorted(e["content"] for e in book["entries"].values())
    assert contents == sorted(f"state {n}" for n in range(12))
    assert sorted(e["uid"] for e in book["entries"].values()) == list(range(12))


def test_service_and_trigger_from_settings(tmp_path: Path) -> None:
    from kvtui.memory.jobs import JobRunner
    from kvtui.settings import Settings
    from kvtui.sideprompts.interval import IntervalTrigger
    from kvtui.sideprompts.service import SidePromptService
    from kvtui.sideprompts.settings import SidePromptSettings

    st_dir = copy_sample(tmp_path / "st")
    settings = Settings(
        st_dir=st_dir,
        state_dir=tmp_path / "state",
        sideprompt_window=7,
        sideprompt_concurrency=3,
        memory_slot=2,
    )
    client = LlamaClient("http://127.0.0.1:9")
    service = SidePromptService.from_settings(settings, JobRunner(client))
    assert (service.window, service.concurrency, service.settings.memory_slot) == (7, 3, 2)
    assert service.library.names()[0] == "Plot points"
    assert IntervalTrigger.from_settings(service, settings).service is service
    assert SidePromptSettings.from_settings(settings).sideprompt_debounce_s == 10.0
    with pytest.raises(ValueError):
        SidePromptSettings(sideprompt_concurrency=0)
    with pytest.raises(SceneError, match="set st_dir"):
        SidePromptService.from_settings(Settings(state_dir=tmp_path), JobRunner(client))
