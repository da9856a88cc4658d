"""kvtui's settings: the seed's defaults, a TOML file, ``KVTUI_*`` variables and flags.

Precedence, highest first: command-line flags (passed as keyword overrides), ``KVTUI_*``
environment variables, the TOML config file, the defaults below. The settings form writes the
TOML file back with :func:`save_settings`, editing the file in place so the user's comments and
layout survive; only values that differ from the defaults are added, so a later change of a
default reaches users who never touched it. Unknown keys are reported (:func:`config_problems`).
"""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import Any

import tomlkit
from platformdirs import user_config_path, user_state_path
from pydantic import Field, ValidationError, field_validator
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
        # memory_*, recall_* and sideprompt_* keys are kept for the parts that own them (each
        # validates its own, see SECTION_PREFIXES); other unknown keys are reported.
        extra="allow",
        validate_assignment=True,
        use_attribute_docstrings=True,
    )

    # The six settings of the SillyTavern extension come first (the settings form keeps
    # this order).

    autosave_enabled: bool = True
    """Save each character's cache automatically every N messages."""

    autosave_every: int = Field(default=5, ge=1, le=1000)
    """Save every N messages (each character has its own counter)."""

    max_autosaves: int = Field(default=10, ge=1, le=1000)
    """Autosaves kept per character per chat; older ones are rotated away (tagged saves never)."""

    notifications: bool = True
    """Show toast notifications for saves, loads, rotations and errors."""

    clear_on_chat_switch: bool = True
    """On a chat switch, save every character used at least once, then release all slots."""

    prewarm_timeout_minutes: float = Field(default=20.0, gt=0, le=24 * 60)
    """Longest time to warm one character before it is marked failed."""

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

    skip_restore_when_ram_cached: bool = False
    """Leave a character llama-server still holds in memory (--cache-ram) there: no disk read."""

    save_when_protective: bool = False
    """Save after any message or before an eviction exactly when its unsaved tokens would take
    longer to prefill again than the save to write (off: the seed's every N and save-first)."""

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
        data[name] = toml_value(value)
    return data


def toml_value(value: Any) -> Any:
    """A setting as TOML writes it: paths as strings, whole floats as integers (``20``)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    """Write ``settings`` to the TOML file atomically and return its path.

    An existing file is edited in place (tomlkit keeps its comments, order and layout): a
    setting already in the file is updated (removed when it is cleared), a new setting is added
    only when it differs from the default, and keys kvtui does not know are left alone.
    """
    target = path or default_config_path()
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    doc = tomlkit.parse(text) if text.strip() else tomlkit.document()
    defaults = Settings.model_construct()
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name in doc:
            current = doc[name]
            unwrapped = current.unwrap() if hasattr(current, "unwrap") else current
            if value is None:
                del doc[name]
            elif unwrapped != toml_value(value) and unwrapped != value:
                doc[name] = toml_value(value)
        elif value is not None and value != getattr(defaults, name):
            doc[name] = toml_value(value)
    return write_atomic(target, tomlkit.dumps(doc))


def field_descriptions() -> dict[str, str]:
    """Each setting's description (its docstring), for the settings form and ``--help``."""
    return {name: (info.description or "").strip() for name, info in Settings.model_fields.items()}


LABELS: dict[str, str] = {
    "autosave_enabled": "Autosave",
    "autosave_every": "Save every N messages",
    "max_autosaves": "Autosaves kept per character",
    "notifications": "Show notifications",
    "clear_on_chat_switch": "Clear slots on a chat switch",
    "prewarm_timeout_minutes": "Prewarm timeout (minutes)",
    "server_url": "llama-server URL",
    "api_key": "llama-server API key",
    "save_dir": "Save directory",
    "st_dir": "SillyTavern data directory",
    "state_dir": "kvtui state directory",
    "prewarm_concurrency": "Characters warmed at once",
    "proxy_enabled": "Routing proxy",
    "proxy_listen": "Proxy address",
    "allowed_origins": "Web pages allowed to use the proxy",
    "allowed_hosts": "Host names of the proxy",
    "max_body_mb": "Largest request (MiB)",
    "allow_insecure_listen": "Listen on the network without an API key",
    "poll_interval": "Poll interval (seconds)",
    "min_save_tokens": "Smallest valid save (tokens)",
    "min_save_bytes": "Smallest valid save (bytes)",
    "keymap": "Key bindings",
}
"""Each setting's name as the settings form shows it (the field name is shown beside it)."""


def field_label(name: str) -> str:
    return LABELS.get(name, name.replace("_", " ").capitalize())


def human_error(err: ValidationError) -> str:
    """The first problem of a validation error in plain words (no library names, no URLs)."""
    problems = [_plain_problem(e) for e in err.errors()]
    return "; ".join(problems[:3]) if problems else "not a valid value"


def _plain_problem(error: Any) -> str:
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    where = ".".join(str(part) for part in error.get("loc", ()) if part != "__root__")
    messages = {
        "int_parsing": "type a whole number, e.g. 5",
        "int_from_float": "type a whole number, e.g. 5",
        "int_type": "type a whole number, e.g. 5",
        "float_parsing": "type a number, e.g. 20 or 1.5",
        "float_type": "type a number, e.g. 20 or 1.5",
        "bool_parsing": "type true or false",
        "bool_type": "type true or false",
        "greater_than_equal": f"must be at least {_num(ctx.get('ge'))}",
        "greater_than": f"must be more than {_num(ctx.get('gt'))}",
        "less_than_equal": f"must be at most {_num(ctx.get('le'))}",
        "less_than": f"must be less than {_num(ctx.get('lt'))}",
        "missing": "a value is required",
        "dict_type": "must be a table of name = value entries",
        "string_type": "must be text",
        "path_type": "must be a folder path",
    }
    if kind in messages:
        text = messages[kind]
    else:
        text = str(error.get("msg", "not a valid value")).removeprefix("Value error, ")
    return f"{where}: {text}" if where else text


def _num(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


SECTION_PREFIXES = ("memory_", "recall_", "sideprompt_")
"""Settings of memory books, recall and side prompts: kept as given, validated by their own
models (``kvtui.memory.settings``, ``kvtui.recall.settings``) when those parts run."""


def unknown_keys(data: dict[str, Any]) -> list[str]:
    """Top-level keys of a config file that are not settings (likely typos)."""
    return [
        key
        for key in data
        if key not in Settings.model_fields and not key.startswith(SECTION_PREFIXES)
    ]


def config_problems(path: Path | None) -> list[str]:
    """What is wrong with the config file that loading it quietly skipped: unknown keys.

    ``path`` None means the default path (``$KVTUI_CONFIG`` or the user's config directory).
    """
    target = path or default_config_path()
    try:
        with target.expanduser().open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return []
    unknown = unknown_keys(data)
    if not unknown:
        return []
    close = {
        key: difflib.get_close_matches(key, list(Settings.model_fields), n=1) for key in unknown
    }
    named = ", ".join(f"{k} (did you mean {close[k][0]}?)" if close[k] else k for k in unknown)
    return [f"{target}: unknown setting(s), ignored: {named}"]
