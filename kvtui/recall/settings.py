"""Recall's settings: a pydantic model, merged into :class:`kvtui.settings.Settings` as flat
``recall_<field>`` fields (the convention of ``kvtui.memory``'s settings), read back with
:meth:`RecallSettings.from_settings`.

Every field has a default that works with no configuration.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

_MACRO_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]{0,63}\Z")


class SwipePolicy(StrEnum):
    """What a swipe does with the recall cached for the user's (unchanged) message."""

    REUSE = "reuse"
    RECOMPUTE = "recompute"


class RecallSettings(BaseModel):
    """Memory recall injected at a macro the user places in the prompt."""

    model_config = ConfigDict(
        extra="ignore", validate_assignment=True, use_attribute_docstrings=True
    )

    enabled: bool = True
    """Replace the recall macros in generation requests (off: requests pass untouched)."""

    macro: str = "kvtui_memories"
    """Name of the per-turn recall macro, written {{kvtui_memories}} where the memories go."""

    longterm_macro: str = "kvtui_longterm"
    """Name of the stable long-term block macro, {{kvtui_longterm}} (changes only in batches)."""

    scan_depth: int = Field(default=2, ge=1, le=1000)
    """Messages from the end of the chat scanned for memory keywords (World Info's default 2)."""

    case_sensitive: bool = False
    """Match memory keywords case-sensitively (an entry's own caseSensitive wins)."""

    match_whole_words: bool = True
    """Match single-word keywords as whole words only (an entry's own matchWholeWords wins)."""

    include_names: bool = True
    """Scan each message as 'Name: text', as World Info does by default."""

    top_k: int = Field(default=4, ge=1, le=100)
    """Most memories injected per turn."""

    token_budget: int = Field(default=400, ge=1, le=100_000)
    """Most tokens of memories injected per turn (estimated as characters / 4)."""

    sticky_penalty: float = Field(default=0.5, ge=0.0, le=100.0)
    """Score taken off a memory per consecutive round it was recalled in (0: no penalty)."""

    sticky_max_streak: int = Field(default=3, ge=1, le=100)
    """Consecutive rounds after which the sticky penalty stops growing."""

    constant_always: bool = False
    """Recall memories marked constant on every turn (off: by their keywords, like the rest)."""

    swipe_policy: SwipePolicy = SwipePolicy.REUSE
    """A swipe reuses the recall of the user's unchanged message, or recomputes it."""

    longterm_batch: int = Field(default=5, ge=1, le=1000)
    """New memories that must accumulate before the long-term block is rebuilt."""

    longterm_budget: int = Field(default=1000, ge=1, le=100_000)
    """Most tokens in the long-term block (the newest memories that fit are kept)."""

    refresh: bool = True
    """After a reply with recall injected, prefill in the background the prompt without this
    turn's recall plus the reply (what the next turn begins with), so a recall near the end
    does not make the next turn prefill the reply again."""

    keep_in_history: bool = True
    """Keep each turn's recall in the prompt where it was injected, so the prompt and the reply
    after it stay cached; a memory already shown there is not repeated. Left out of a request
    it would push past the slot's context (off: only this turn's recall is in the prompt)."""

    keep_budget: int = Field(default=1000, ge=1, le=100_000)
    """Most tokens of earlier turns' recall kept in the prompt (estimated as characters / 4);
    once full, a new turn's recall is injected but not kept."""

    exclude_longterm: bool = True
    """Leave memories already in the long-term block out of the per-turn recall."""

    item_template: str = "{content}"
    """How each memory is written: {content}, {title} and {keys} are filled in."""

    joiner: str = "\n"
    """Text between two memories."""

    PREFIX: ClassVar[str] = "recall_"
    """Each field is ``recall_<name>`` on kvtui's flat :class:`~kvtui.settings.Settings`."""

    @classmethod
    def from_settings(cls, settings: Any) -> RecallSettings:
        """The ``recall_*`` fields found on ``settings`` (a ``Settings``), defaults for the rest."""
        values = {
            name: getattr(settings, cls.PREFIX + name)
            for name in cls.model_fields
            if hasattr(settings, cls.PREFIX + name)
        }
        return cls(**values)

    @field_validator("macro", "longterm_macro")
    @classmethod
    def _check_macro(cls, value: str) -> str:
        value = value.strip().strip("{} ")
        if not _MACRO_NAME.match(value):
            raise ValueError("a macro name is letters, digits and _ (e.g. kvtui_memories)")
        return value

    @field_validator("item_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        try:
            value.format(content="", title="", keys="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(
                f"use only {{content}}, {{title}} and {{keys}} (double other braces): {err}"
            ) from None
        return value
