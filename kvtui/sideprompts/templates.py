"""Side-prompt templates: the model, kvtui's four built-ins and the template library.

A template names a tracker (its lorebook entry is titled ``Name (kvtui SidePrompt)``), holds the
instruction text and optional response-format guidance (text, not a schema), its triggers
(after each memory, every N visible messages, manual runs), how many earlier memories it reads
(0-7), an optional server (and model) override and the lorebook settings of the entry it
creates. The library is :class:`kvtui.memory.library.TemplateLibrary`
(``sideprompts/templates.json`` in kvtui's state directory): create, edit, duplicate, delete,
additive import/export, and "recreate built-ins" that leaves user templates alone.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from kvtui.memory.library import TemplateLibrary
from kvtui.memory.lorebook import EntrySettings
from kvtui.memory.settings import EntryMode, OrderMode

TITLE_SUFFIX = " (kvtui SidePrompt)"
KIND = "sideprompt"


class LoreMode(StrEnum):
    """STMB's names: ``link`` = vectorized, ``green`` = keyword (normal), ``blue`` = constant."""

    LINK = "link"
    GREEN = "green"
    BLUE = "blue"


_MODES = {
    LoreMode.LINK: EntryMode.VECTORIZED,
    LoreMode.GREEN: EntryMode.KEYWORD,
    LoreMode.BLUE: EntryMode.CONSTANT,
}


class Triggers(BaseModel):
    model_config = ConfigDict(extra="forbid")

    after_memory: bool = False
    """Run on the scene just memorised, after every memory of the chat."""
    interval: int | None = Field(default=None, ge=1, le=10000)
    """Run when this many visible messages have arrived since the last run (None: off)."""
    manual: bool = True
    """Allow ``kvtui sideprompt NAME`` and the dashboard's Run."""


class LoreSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: LoreMode = LoreMode.LINK
    position: int = Field(default=0, ge=0, le=7)
    order_mode: OrderMode = OrderMode.MANUAL
    order_value: int = Field(default=100, ge=0, le=9999)
    prevent_recursion: bool = True
    delay_until_recursion: bool = False

    @field_validator("position")
    @classmethod
    def _no_depth(cls, value: int) -> int:
        if value == 4:
            raise ValueError("position 4 (@depth) is not offered for side prompts; use 0-3, 5-7")
        return value

    def entry_settings(self) -> EntrySettings:
        return EntrySettings(
            mode=_MODES[self.mode],
            position=self.position,
            order_mode=OrderMode.MANUAL,  # a tracker has no memory number: auto = the value
            order_value=self.order_value,
            prevent_recursion=self.prevent_recursion,
            delay_until_recursion=self.delay_until_recursion,
        )


class SidePrompt(BaseModel):
    """One side-prompt template."""

    name: str
    prompt: str = Field(min_length=1)
    response_format: str = ""
    """Guidance appended to the prompt (how the reply should look); plain text."""
    enabled: bool = True
    triggers: Triggers = Field(default_factory=Triggers)
    previous_memories: int = Field(default=0, ge=0, le=7)
    server_url: str | None = None
    """Another llama-server for this template's jobs (unset: the memory job settings)."""
    model: str | None = None
    """The model to ask that server for (a router llama-server picks it by name)."""
    api_key: str | None = None
    n_predict: int | None = Field(default=None, ge=16, le=32768)
    """Longest reply (unset: memory_n_predict)."""
    lore: LoreSettings = Field(default_factory=LoreSettings)
    builtin: bool = False

    @field_validator("server_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("server_url must start with http:// or https://")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return (value.strip() or None) if value is not None else None

    @model_validator(mode="after")
    def _model_needs_server(self) -> SidePrompt:
        if self.model is not None and self.server_url is None:
            raise ValueError("model names a model on another server: set server_url too")
        return self

    @property
    def title(self) -> str:
        return entry_title(self.name)

    @property
    def key(self) -> str:
        """The checkpoint key (names compare case-insensitively)."""
        return self.name.strip().casefold()


def entry_title(name: str) -> str:
    return f"{name.strip()}{TITLE_SUFFIX}"


_PLAIN = "Reply with the updated text only: no preamble, no commentary, no JSON."

_BUILTINS = (
    SidePrompt(
        name="Plot points",
        prompt=(
            "You keep the list of open story threads in a roleplay between {{user}} and "
            "{{char}}. Read the current list (if any) and the new messages, then write the "
            "updated list: threads still open, new hooks, promises and mysteries; drop threads "
            "that were resolved (mention each resolution once, briefly)."
        ),
        response_format=(
            "A bulleted list, one thread per line: '- <thread>: <where it stands>'. At most 12 "
            "lines. " + _PLAIN
        ),
        triggers=Triggers(after_memory=True),
        builtin=True,
    ),
    SidePrompt(
        name="Status",
        prompt=(
            "You track the state of the relationship between {{user}} and {{char}}: trust, "
            "affection, tension, and anything that changed how they treat each other. Update "
            "the current status from the new messages; keep what still holds."
        ),
        response_format=(
            "Short lines 'Aspect: value - reason' (e.g. 'Trust: high - kept the promise at the "
            "bridge'), then one line 'Recent change: ...'. " + _PLAIN
        ),
        triggers=Triggers(after_memory=True),
        builtin=True,
    ),
    SidePrompt(
        name="Cast of characters",
        prompt=(
            "You keep the cast list of a roleplay between {{user}} and {{char}}: every named "
            "character other than {{user}} and {{char}}, most important to the plot first. Add "
            "newcomers from the new messages and update what is known about the others."
        ),
        response_format=(
            "One line per character: '- <Name> (<role>): <one sentence of what matters>'. " + _PLAIN
        ),
        triggers=Triggers(after_memory=True),
        builtin=True,
    ),
    SidePrompt(
        name="Assessment",
        prompt=(
            "Write what {{char}} knows and believes about {{user}} so far: facts learned, "
            "impressions, suspicions, and what {{char}} still wonders. Update the current "
            "assessment from the new messages, from {{char}}'s point of view."
        ),
        response_format="A short paragraph, then up to 5 bullet points of facts. " + _PLAIN,
        triggers=Triggers(after_memory=False, interval=None),
        builtin=True,
    ),
)


def builtin_templates() -> list[SidePrompt]:
    return [t.model_copy(deep=True) for t in _BUILTINS]


def sideprompt_dir(state_dir: Path) -> Path:
    return state_dir / "sideprompts"


def template_library(state_dir: Path) -> TemplateLibrary[SidePrompt]:
    """The side-prompt templates of kvtui's state directory (built-ins seeded on first use)."""
    path = sideprompt_dir(state_dir) / "templates.json"
    return TemplateLibrary(path, SidePrompt, builtin_templates, kind="side prompt")
