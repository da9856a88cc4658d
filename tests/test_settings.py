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


def test_saving_keeps_the_users_comments_layout_and_unknown_keys(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    original = (
        "# my kvtui set-up\n"
        "\n"
        'server_url = "http://gpu-box:8080"  # the big machine\n'
        "autosave_every = 7\n"
        "\n"
        "# keep more\n"
        "max_autosaves = 20\n"
        "future_option = true\n"
    )
    config.write_text(original)
    s = load_settings(config)
    changed = s.model_copy(update={"autosave_every": 3, "prewarm_timeout_minutes": 30.0})
    save_settings(changed, config)
    text = config.read_text()
    assert text.startswith("# my kvtui set-up\n\n")
    assert 'server_url = "http://gpu-box:8080"  # the big machine\n' in text
    assert "autosave_every = 3\n" in text and "# keep more\nmax_autosaves = 20\n" in text
    assert "future_option = true" in text  # not ours: left alone
    assert "prewarm_timeout_minutes = 30\n" in text  # as a person writes it, not 30.0
    assert load_settings(config).prewarm_timeout_minutes == 30
    # Nothing changed: the file is byte-identical after a save.
    save_settings(load_settings(config), config)
    assert config.read_text() == text


def test_unknown_keys_are_reported_with_a_suggestion(tmp_path: Path) -> None:
    from kvtui.settings import config_problems

    config = tmp_path / "config.toml"
    config.write_text("autosave_evry = 3\nmax_autosaves = 4\n")
    [problem] = config_problems(config)
    assert "autosave_evry (did you mean autosave_every?)" in problem
    assert str(config) in problem
    config.write_text("max_autosaves = 4\n")
    assert config_problems(config) == []
    assert config_problems(tmp_path / "missing.toml") == []


def test_errors_are_in_plain_words(tmp_path: Path) -> None:
    from kvtui.settings import human_error

    with pytest.raises(ValidationError) as caught:
        load_settings(tmp_path / "x.toml", autosave_every="abc")
    message = human_error(caught.value)
    assert message == "autosave_every: type a whole number, e.g. 5"
    with pytest.raises(ValidationError) as caught:
        load_settings(tmp_path / "x.toml", prewarm_timeout_minutes=0)
    assert human_error(caught.value) == "prewarm_timeout_minutes: must be more than 0"
    assert "http" not in message and "pydantic" not in message.lower()


def test_the_six_seed_settings_come_first_with_labels() -> None:
    from kvtui.settings import field_label

    assert list(Settings.model_fields)[:6] == [
        "autosave_enabled", "autosave_every", "max_autosaves", "notifications",
        "clear_on_chat_switch", "prewarm_timeout_minutes",
    ]  # fmt: skip
    assert all(field_label(name) != name for name in Settings.model_fields)
