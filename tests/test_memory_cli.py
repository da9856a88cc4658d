"""``kvtui memory``: presets, usage errors (no server needed), and a memory followed by its
after-memory side prompts on the real embedded server."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.memory.cli import add_memory_parser, run_memory
from kvtui.settings import Settings, load_settings


def cli(argv: list[str], settings: Settings) -> int:
    parser = argparse.ArgumentParser(prog="kvtui")
    add_memory_parser(parser.add_subparsers(dest="command"))
    return run_memory(parser.parse_args(argv), settings)


def test_presets_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(
        tmp_path / "config.toml", state_dir=tmp_path / "state", server_url="http://127.0.0.1:9"
    )
    prompt_file = tmp_path / "p.txt"
    prompt_file.write_text("Summarize {{char}} as JSON.")
    assert cli(["memory", "presets", "add", "Mine", "--file", str(prompt_file)], settings) == 0
    assert cli(["memory", "presets", "add", "mine", "--prompt", "x"], settings) == 1
    assert "exists" in capsys.readouterr().err
    assert cli(["memory", "presets", "edit", "Mine", "--rename", "Ours"], settings) == 0
    assert cli(["memory", "presets", "edit", "Ours"], settings) == 1
    assert cli(["memory", "presets", "duplicate", "Ours"], settings) == 0
    assert cli(["memory", "presets", "delete", "Synopsis"], settings) == 0
    out = tmp_path / "out.json"
    assert cli(["memory", "presets", "export", "-o", str(out)], settings) == 0
    names = [p["name"] for p in json.loads(out.read_text())["items"]]
    assert names == ["Detailed summary", "Minimal", "Ours", "Ours (copy)"]
    assert cli(["memory", "presets", "reset"], settings) == 0
    capsys.readouterr()
    assert cli(["memory", "presets", "list", "--json"], settings) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)}
    assert listed["Synopsis"]["builtin"] and not listed["Ours"]["builtin"]
    assert listed["Ours"]["prompt"] == "Summarize {{char}} as JSON."


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(
        tmp_path / "config.toml", state_dir=tmp_path / "state", server_url="http://127.0.0.1:9"
    )
    assert cli(["memory"], settings) == 2
    assert "--chat" in capsys.readouterr().err
    assert cli(["memory", "--chat", "x"], settings) == 1
    assert "st_dir" in capsys.readouterr().err
    assert cli(["memory", "presets", "show", "Nope"], settings) == 1
    assert "No preset" in capsys.readouterr().err


def test_memory_runs_the_after_memory_side_prompts(
    clean_server: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kvtui memory --yes``: the memory, then one line per enabled after-memory template (a
    batch of four, on the same utility slot), each tracker saved; ``--json`` carries them."""
    from kvtui.cli_parts import _memory_args, memory
    from kvtui.memory.prompt import Preset, preset_library
    from kvtui.memory.settings import memory_dir
    from kvtui.sideprompts.templates import template_library
    from kvtui.sillytavern.sample import SOLO_CHAT_ID, copy_sample
    from tests.sideprompt_helpers import tiny

    st_dir = copy_sample(tmp_path / "st")
    state = tmp_path / "state"
    settings = Settings(server_url=clean_server.url, save_dir=clean_server.save_dir,
                        st_dir=st_dir, state_dir=state, memory_slot=3, memory_n_predict=450,
                        memory_previous=0, memory_max_title_chars=30,
                        memory_max_content_chars=120, memory_max_keywords=4)  # fmt: skip
    preset_library(memory_dir(state)).add(
        Preset(name="Tiny", prompt="Write a memory of the scene below as JSON.")
    )
    library = template_library(state)
    for name in library.names():
        library.delete(name)
    for n in range(4):
        library.add(tiny(f"B{n}", after_memory=True))
    library.add(tiny("Off", after_memory=True).model_copy(update={"enabled": False}))
    library.add(tiny("Manual"))

    def run(*argv: str) -> int:
        parser = argparse.ArgumentParser()
        _memory_args(parser)
        code = memory(settings, parser.parse_args(["--chat", SOLO_CHAT_ID, *argv]))
        assert isinstance(code, int)
        return code

    assert run("--range", "0-2", "--preset", "Tiny", "--yes") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("Memory ") and "saved" in out[0]
    lines = [line for line in out if line.startswith(("✓", "✗"))]
    assert sorted(lines) == [f'✓ B{n}: Updated "B{n} (kvtui SidePrompt)" in kvtui - '
                             f"{SOLO_CHAT_ID}." for n in range(4)]  # fmt: skip
    book = json.loads((st_dir / "worlds" / f"kvtui - {SOLO_CHAT_ID}.json").read_text())
    kinds = sorted((e["kvtui_kind"], e["comment"]) for e in book["entries"].values())
    assert [k for k, _ in kinds] == ["memory"] + ["sideprompt"] * 4
    assert all(e["kvtui_end"] == 2 for e in book["entries"].values())

    assert run("--range", "3-5", "--preset", "Tiny", "--yes", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["saved"] and sorted(r["template"] for r in data["sideprompts"]) == [
        "B0", "B1", "B2", "B3"
    ]  # fmt: skip
    assert {(r["status"], r["slot"], r["start"], r["end"]) for r in data["sideprompts"]} == {
        ("saved", 3, 3, 5)
    }
    assert run("--range", "0-1", "--preset", "Tiny", "--yes", "--no-side-prompts", "--json") == 0
    assert "sideprompts" not in json.loads(capsys.readouterr().out)
