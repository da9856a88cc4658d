"""Settings: defaults from the seed, TOML file, environment and flags in that order."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from kvtui.settings import (
    ConfigError,
    Settings,
    field_descriptions,
    load_settings,
    parse_listen,
    save_settings,
)


def test_seed_defaults(tmp_path: Path) -> None:
    s = load_settings(tmp_path / "missing.toml")
    assert s.autosave_enabled is True
    assert s.autosave_every == 5
    assert s.max_autosaves == 10
    assert s.notifications is True
    assert s.clear_on_chat_switch is True
    assert s.prewarm_timeout_minutes == 20
    assert s.listen_host == "127.0.0.1" and s.listen_port == 8081


def test_precedence_flags_over_env_over_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('server_url = "http://file:1"\nautosave_every = 7\nmax_autosaves = 3\n')
    monkeypatch.setenv("KVTUI_AUTOSAVE_EVERY", "9")
    s = load_settings(config, max_autosaves=None)
    assert s.server_url == "http://file:1"
    assert s.autosave_every == 9  # env beats file
    assert s.max_autosaves == 3  # a flag not given does not mask the file
    s = load_settings(config, autosave_every=2)
    assert s.autosave_every == 2  # flag beats env


def test_round_trip_writes_only_changes(tmp_path: Path) -> None:
    config = tmp_path / "sub" / "config.toml"
    s = load_settings(config, save_dir=tmp_path / "saves", autosave_every=3)
    save_settings(s, config)
    text = config.read_text()
    assert "autosave_every = 3" in text
    assert "max_autosaves" not in text
    again = load_settings(config)
    assert again.save_dir == tmp_path / "saves"
    assert again.autosave_every == 3


def test_invalid_values_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        load_settings(tmp_path / "x.toml", autosave_every=0)
    with pytest.raises(ValidationError):
        load_settings(tmp_path / "x.toml", server_url="localhost:8080")
    with pytest.raises(ValueError):
        parse_listen("nonsense")
    bad = tmp_path / "bad.toml"
    bad.write_text("autosave_every = [")
    with pytest.raises(ConfigError):
        load_settings(bad)


def test_every_setting_is_described() -> None:
    descriptions = field_descriptions()
    assert set(descriptions) == set(Settings.model_fields)
    assert all(descriptions.values())
