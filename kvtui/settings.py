"""kvtui's settings: the seed's defaults, a TOML file, ``KVTUI_*`` variables and flags.

Precedence, highest first: command-line flags (passed as keyword overrides), ``KVTUI_*``
environment variables, the TOML config file, the defaults below. The settings form writes the
TOML file back with :func:`save_settings`; only values that differ from the defaults are written,
so a later change of a default reaches users who never touched it.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

import tomli_w
from platformdirs import user_config_path, user_state_path
from pydantic import Field, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from kvtui.atomic import write_atomic
from kvtui.errors import KvtuiError

CONFIG_ENV = "KVTUI_CONFIG"


def default_config_path() -> Path:
    """``$KVTUI_CONFIG``, else ``config.toml`` in the user's config directory."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else user_config_path("kvtui") / "config.toml"


def default_state_dir() -> Path:
    """Where kvtui keeps its slot book and recorded prompts (private to the user)."""
    return user_state_path("kvtui")


class Settings(BaseSettings):
    """Everything a user can set. Each field's docstring is shown in the settings form."""

    model_config = SettingsConfigDict(
        env_prefix="KVTUI_",
        extra="ignore",
        validate_assignment=True,
        use_attribute_docstrings=True,
    )

    server_url: str = "http://127.0.0.1:8080"
    """URL of the llama-server that kvtui manages."""

    api_key: str | None = None
    """API key of llama-server (its --api-key), sent as a Bearer token."""

    save_dir: Path | None = None
    """The server's --slot-save-path directory, where save files live (kvtui reads it directly)."""

    st_dir: Path | None = None
    """SillyTavern user data directory (data/<user>), for chats, groups and characters."""

    state_dir: Path = Field(default_factory=default_state_dir)
    """Where kvtui keeps its slot book and recorded prompts."""

    autosave_enabled: bool = True
    """Save each character's cache automatically every N messages."""

    autosave_every: int = Field(default=5, ge=1, le=1000)
    """Save every N messages (each character has its own counter)."""

    max_autosaves: int = Field(default=10, ge=1, le=1000)
    """Autosaves kept per character per chat; older ones are rotated away (tagged saves never)."""

    notifications: bool = True
    """Show toast notifications for saves, loads, rotations and errors."""

    clear_on_chat_switch: bool = True
    """On a chat switch, save every character used at least once, then clear all slots."""

    prewarm_timeout_minutes: float = Field(default=20.0, gt=0, le=24 * 60)
    """Longest time to warm one character before it is marked failed."""

    prewarm_concurrency: int = Field(default=1, ge=1, le=64)
    """Characters warmed at once during prewarm (more helps only on GPUs that batch prompts)."""

    proxy_enabled: bool = True
    """Run the routing proxy while the dashboard is open."""

    proxy_listen: str = "127.0.0.1:8081"
    """Address the proxy listens on (point SillyTavern's llama.cpp API URL here)."""

    allowed_origins: list[str] = Field(
        default_factory=lambda: [
            "http://localhost:8000",
            "http://127.0.0.1:8000",
            "http://[::1]:8000",
        ]
    )
    """Web pages (origins) that may use the proxy from a browser: SillyTavern's page for the
    companion extension. Requests from SillyTavern's server carry no origin and always work."""

    allowed_hosts: list[str] = Field(default_factory=list)
    """Host names (besides loopback names and IP addresses) under which clients reach the proxy."""

    max_body_mb: float = Field(default=32.0, gt=0, le=4096)
    """Largest request body the proxy accepts, in MiB (a 128k-token prompt is a few MiB)."""

    allow_insecure_listen: bool = False
    """Let the proxy listen on a non-loopback address without an API key (anyone on the network
    could then drive the slots)."""

    poll_interval: float = Field(default=1.0, ge=0.1, le=60)
    """Seconds between polls of the server's /slots."""

    min_save_tokens: int = Field(default=1, ge=0)
    """A save with fewer tokens than this is invalid and removed (0 tokens = an empty slot)."""

    min_save_bytes: int = Field(default=0, ge=0)
    """A save smaller than this many bytes is invalid and removed (the seed used 1 MB; off)."""

    keymap: dict[str, str] = Field(default_factory=dict)
    """Key bindings by action id, e.g. {"save_slot" = "ctrl+s"}."""

    @field_validator("server_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("proxy_listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        parse_listen(value)
        return value.strip()

    @field_validator("save_dir", "st_dir", "state_dir", mode="after")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def listen_host(self) -> str:
        return parse_listen(self.proxy_listen)[0]

    @property
    def listen_port(self) -> int:
        return parse_listen(self.proxy_listen)[1]

    @property
    def book_path(self) -> Path:
        return self.state_dir / "slots.json"

    @property
    def prompts_dir(self) -> Path:
        return self.state_dir / "prompts"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8081`` for IPv6; a bare port means loopback)."""
    value = value.strip()
    if value.isdigit():
        host, port_text = "127.0.0.1", value
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{value!r} is not HOST:PORT")
        host = host.strip("[]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{value!r}: port must be a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"{value!r}: port must be between 1 and 65535")
    return host, port


class _TomlSource(PydanticBaseSettingsSource):
    """The TOML config file, read from the path current when settings are loaded."""

    path: Path | None = None

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _TomlSource.path or default_config_path()
        if not path.exists():
            return {}
        with path.open("rb") as fh:
            try:
                data = tomllib.load(fh)
            except tomllib.TOMLDecodeError as err:
                raise ConfigError(f"{path}: not valid TOML: {err}") from err
        return data


class ConfigError(KvtuiError, ValueError):
    """The config file cannot be read."""


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Load settings from ``config`` (or the default path) under env and ``overrides``.

    ``None`` overrides are ignored, so flags that were not given do not mask the file.
    """
    _TomlSource.path = config
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _TomlSource.path = None


def settings_to_toml(settings: Settings) -> dict[str, Any]:
    """The values that differ from the defaults, as TOML-ready data."""
    defaults = Settings.model_construct()
    data: dict[str, Any] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value == getattr(defaults, name) or value is None:
            continue
        data[name] = str(value) if isinstance(value, Path) else value
    return data


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    """Write ``settings`` to the TOML file atomically and return its path."""
    target = path or default_config_path()
    return write_atomic(target, tomli_w.dumps(settings_to_toml(settings)))


def field_descriptions() -> dict[str, str]:
    """Each setting's description (its docstring), for the settings form and ``--help``."""
    return {name: (info.description or "").strip() for name, info in Settings.model_fields.items()}
