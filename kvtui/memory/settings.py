"""Memory settings: the knobs of memory jobs and of the entries they write.

``MemorySettings`` is a plain pydantic model so the lead can merge its fields into
``kvtui.settings.Settings`` under the same names; until then (and afterwards, unchanged)
``MemorySettings.from_settings(settings)`` reads every field it finds on a ``Settings`` object and
keeps the default for the rest.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class EntryMode(StrEnum):
    """How SillyTavern activates a memory entry.

    ``keyword``: by its keys (STMB's "green"). ``constant``: always (STMB's "blue").
    ``vectorized``: flagged for Vector Storage and still activated by keys (STMB's "link").
    """

    KEYWORD = "keyword"
    CONSTANT = "constant"
    VECTORIZED = "vectorized"


class OrderMode(StrEnum):
    """``auto``: an entry's order is its memory number; ``manual``: ``memory_order_value``."""

    AUTO = "auto"
    MANUAL = "manual"


# World Info positions SillyTavern knows (world-info.js): 0 before char defs, 1 after char defs,
# 2 AN top, 3 AN bottom, 4 @depth, 5 example messages top, 6 example messages bottom, 7 outlet.
POSITIONS = {
    0: "before character definitions",
    1: "after character definitions",
    2: "top of Author's Note",
    3: "bottom of Author's Note",
    4: "at depth",
    5: "top of example messages",
    6: "bottom of example messages",
    7: "outlet",
}


class MemorySettings(BaseModel):
    """Everything a user can set about memories. Field docstrings are shown in the form."""

    model_config = ConfigDict(validate_assignment=True, use_attribute_docstrings=True)

    memory_slot: int | None = Field(default=None, ge=0)
    """A slot reserved for memory jobs (no character is routed there); unset: borrow an idle
    slot, saving its occupant first and restoring it afterwards."""

    memory_server_url: str | None = None
    """A second llama-server for memory jobs (unset: the main server)."""

    memory_api_key: str | None = None
    """API key of the memory server."""

    memory_n_predict: int = Field(default=1024, ge=64, le=32768)
    """Most tokens a memory reply may have; a reply that hits it is reported as truncated."""

    memory_temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    """Sampling temperature of memory jobs (low: the reply is a summary, not prose)."""

    memory_token_warning: int = Field(default=8000, ge=1)
    """Warn when a memory prompt has more tokens than this."""

    memory_previous: int = Field(default=1, ge=0, le=7)
    """Earlier memories shown to the model as context (0-7), marked not to be summarised."""

    memory_max_title_chars: int = Field(default=60, ge=8, le=200)
    """Longest title the grammar allows."""

    memory_max_content_chars: int = Field(default=2000, ge=40, le=20000)
    """Longest memory text the grammar allows."""

    memory_max_keywords: int = Field(default=20, ge=1, le=50)
    """Most keywords the grammar allows."""

    memory_title_format: str = "[000] - {{title}}"
    """Entry titles: [000] becomes the memory number (zero-padded to the width of the
    placeholder); {{title}}, {{char}}, {{user}}, {{scene}} and {{date}} are filled in."""

    memory_mode: EntryMode = EntryMode.CONSTANT
    """keyword, constant or vectorized (see the README: constant entries at a fixed position
    keep the prompt prefix stable, so they cost a character's cache only when a memory is added)."""

    memory_position: int = Field(default=1, ge=0, le=7)
    """World Info position (0 before char defs, 1 after char defs, 2/3 Author's Note top/bottom,
    4 @depth, 5/6 example messages top/bottom, 7 outlet)."""

    memory_depth: int = Field(default=4, ge=0, le=1000)
    """Insertion depth for position 4 (@depth)."""

    memory_outlet: str = ""
    """Outlet name for position 7."""

    memory_order_mode: OrderMode = OrderMode.AUTO
    """auto: order = memory number (newer memories later in the block); manual: the value below."""

    memory_order_value: int = Field(default=100, ge=0, le=9999)
    """Order of every entry when the order mode is manual."""

    memory_prevent_recursion: bool = True
    """Memory text does not activate other entries."""

    memory_delay_until_recursion: bool = False
    """The entry activates only during recursion."""

    memory_book_name: str = "kvtui - {{chat}}"
    """Name of the lorebook kvtui writes for a chat ({{chat}} is the chat's title)."""

    memory_outgoing_regex: list[tuple[str, str]] = Field(default_factory=list)
    """(pattern, replacement) pairs applied to the scene before it is sent, in order."""

    @field_validator("memory_server_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("memory_title_format")
    @classmethod
    def _check_title(cls, value: str) -> str:
        if "{{title}}" not in value:
            raise ValueError("must contain {{title}}")
        return value

    @field_validator("memory_book_name")
    @classmethod
    def _check_book(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @classmethod
    def from_settings(cls, settings: Any) -> MemorySettings:
        """The memory fields found on ``settings`` (a ``Settings``), defaults for the rest."""
        values = {
            name: getattr(settings, name) for name in cls.model_fields if hasattr(settings, name)
        }
        return cls(**values)


def memory_dir(state_dir: Path) -> Path:
    """Where kvtui keeps its memory state (progress, presets, book ownership)."""
    return state_dir / "memory"
