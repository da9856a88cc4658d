"""``kvtui memory presets …`` and the CLI's usage errors (no server needed)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

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
