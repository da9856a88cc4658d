"""Chat → memory → lorebook against the real server and the sample SillyTavern directory.

Edit-then-accept saves the edit; cancel writes nothing; a failure (a real truncated reply from
the server) writes nothing; the CLI does the same headless.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama.client import LlamaClient
from kvtui.memory.cli import add_memory_parser, run_memory
from kvtui.memory.contract import ReplyCode
from kvtui.memory.jobs import JobRunner
from kvtui.memory.lorebook import ENTRY_TEMPLATE
from kvtui.memory.preview import PreviewError, PreviewState
from kvtui.memory.prompt import Preset
from kvtui.memory.settings import MemorySettings
from kvtui.memory.workflow import MemoryWorkflow
from kvtui.settings import Settings, load_settings
from kvtui.sillytavern import SillyTavernData
from kvtui.sillytavern.sample import SOLO_CHAT_ID, copy_sample

TINY_PROMPT = "Write a memory of the scene below between {{user}} and {{char}} as JSON."
SMALL = {
    "memory_slot": 3,
    "memory_n_predict": 450,
    "memory_max_title_chars": 30,
    "memory_max_content_chars": 120,
    "memory_max_keywords": 4,
}


class WithMemory:
    """``Settings`` plus memory fields (until the lead merges MemorySettings into Settings)."""

    def __init__(self, settings: Settings, **memory: Any) -> None:
        self._settings = settings
        self.__dict__.update(memory)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._settings, name)


@pytest.fixture
def st_dir(tmp_path: Path) -> Path:
    return copy_sample(tmp_path / "st")


@pytest.fixture
async def flow(
    clean_server: EmbeddedServer, st_dir: Path, tmp_path: Path
) -> AsyncIterator[MemoryWorkflow]:
    client = LlamaClient(clean_server.url, save_dir=clean_server.save_dir)
    runner = JobRunner(client, MemorySettings(**SMALL))
    workflow = MemoryWorkflow(
        SillyTavernData(st_dir), tmp_path / "state", MemorySettings(**SMALL), runner
    )
    workflow.presets.add(Preset(name="Tiny", prompt=TINY_PROMPT))
    yield workflow
    await client.aclose()


async def test_edit_then_accept_saves_the_edit(flow: MemoryWorkflow) -> None:
    plan = flow.plan(SOLO_CHAT_ID, "0-2", "Tiny")
    assert plan.prompt.text.startswith(
        "Write a memory of the scene below between Alex and Seraphina as JSON."
    )
    budget = await flow.estimate(plan)
    assert budget.fits and budget.tokens > 50
    preview = await flow.generate(plan)
    assert preview.state is PreviewState.READY, preview.error
    preview.edit(content="Seraphina found Alex hurt and healed him.", keywords=["glade", "Alex"])
    preview.accept()
    saved = await flow.save(plan, preview)
    assert "Chat Lore" in saved.hint and "reload" in saved.hint

    book = json.loads(plan.book_path.read_text(encoding="utf-8"))
    assert plan.book_path.parent == flow.st_data.user_dir / "worlds"
    assert plan.book_path.name == f"kvtui - {SOLO_CHAT_ID}.json"
    (entry,) = book["entries"].values()
    assert set(ENTRY_TEMPLATE) <= set(entry)
    assert entry["content"] == "Seraphina found Alex hurt and healed him."
    assert entry["key"] == ["glade", "Alex"]
    assert entry["comment"].startswith("[001] - ")
    assert (entry["kvtui_start"], entry["kvtui_end"]) == (0, 2)

    nxt = flow.plan(SOLO_CHAT_ID, None, "Tiny", previous=1)
    assert (nxt.start_point.start, nxt.start_point.source) == (3, "kvtui")
    assert nxt.scene.start == 3
    assert "Seraphina found Alex hurt and healed him." in nxt.prompt.text
    assert "DO NOT SUMMARIZE" in nxt.prompt.text
    assert [m.memory.content for m in flow.memories(plan.ref)] == [entry["content"]]


async def test_cancel_writes_nothing(flow: MemoryWorkflow) -> None:
    plan = flow.plan(SOLO_CHAT_ID, "0-2", "Tiny")
    preview = await flow.generate(plan)
    assert preview.state is PreviewState.READY
    preview.cancel()
    with pytest.raises(PreviewError):
        await flow.save(plan, preview)
    assert not plan.book_path.exists()
    assert not (flow.dir / "progress.json").exists()


async def test_a_failed_reply_writes_nothing(flow: MemoryWorkflow) -> None:
    flow.settings = MemorySettings(**{**SMALL, "memory_n_predict": 64})
    flow.runner.settings = flow.settings
    plan = flow.plan(SOLO_CHAT_ID, "0-2", "Tiny")
    preview = await flow.generate(plan)
    assert preview.state is PreviewState.FAILED
    assert preview.error is not None and preview.error.code is ReplyCode.TRUNCATED
    with pytest.raises(PreviewError):
        preview.accept()
    with pytest.raises(PreviewError):
        await flow.save(plan, preview)
    preview.retry()
    assert preview.state.value == "waiting"
    assert not plan.book_path.exists()
    assert not (flow.dir / "progress.json").exists()


def cli(argv: list[str], settings: Any) -> int:
    parser = argparse.ArgumentParser(prog="kvtui")
    add_memory_parser(parser.add_subparsers(dest="command"))
    return run_memory(parser.parse_args(argv), settings)


def test_cli_headless(
    clean_server: EmbeddedServer,
    st_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base = load_settings(
        tmp_path / "config.toml",
        server_url=clean_server.url,
        save_dir=clean_server.save_dir,
        st_dir=st_dir,
        state_dir=tmp_path / "state",
    )
    settings = WithMemory(base, **SMALL)
    preset_file = tmp_path / "tiny.json"
    preset_file.write_text(json.dumps([{"name": "Tiny", "prompt": TINY_PROMPT}]))
    assert cli(["memory", "presets", "import", str(preset_file)], settings) == 0
    assert cli(["memory", "presets", "import", str(preset_file)], settings) == 0
    assert cli(["memory", "presets", "list", "--json"], settings) == 0
    capsys.readouterr()
    assert cli(["memory", "presets", "show", "Tiny (2)"], settings) == 0
    assert capsys.readouterr().out.strip() == TINY_PROMPT

    argv = ["memory", "--chat", SOLO_CHAT_ID, "--range", "1-3", "--preset", "Tiny"]
    assert cli([*argv, "--yes", "--json"], settings) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["saved"] is True and out["range"] == [1, 3]
    assert out["entry"]["number"] == 1 and out["memory"]["title"]
    book = json.loads(Path(out["book_path"]).read_text(encoding="utf-8"))
    assert len(book["entries"]) == 1

    assert cli([*argv, "--json"], settings) == 0  # no --yes, no terminal
    out = json.loads(capsys.readouterr().out)
    assert out["saved"] is False
    assert len(json.loads(Path(out["book_path"]).read_text(encoding="utf-8"))["entries"]) == 1

    assert cli(["memory", "--chat", "nope", "--yes"], settings) == 1
    assert "No chat" in capsys.readouterr().err
