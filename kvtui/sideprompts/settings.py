"""Side-prompt settings (``sideprompt_*`` keys in kvtui's config, validated here).

``kvtui.settings.Settings`` keeps unknown ``sideprompt_*`` keys for this part;
:meth:`SidePromptSettings.from_settings` reads the ones it finds and keeps the defaults for the
rest. The jobs themselves use the memory job settings (``memory_slot``, ``memory_server_url``,
``memory_n_predict``, ``memory_temperature``, ``memory_book_name``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SidePromptSettings(BaseModel):
    model_config = ConfigDict(validate_assignment=True, use_attribute_docstrings=True)

    sideprompt_previews: bool = True
    """Show each side-prompt reply for accept / edit / retry / cancel before it is saved
    (automatic runs with nobody to ask are saved as they come)."""

    sideprompt_concurrency: int = Field(default=2, ge=1, le=8)
    """After-memory batches: runs in progress at once (their generations still one at a time)."""

    sideprompt_debounce_s: float = Field(default=10.0, ge=0.0, le=600.0)
    """Interval triggers wait this long after the threshold is reached, then check again."""

    sideprompt_window: int = Field(default=200, ge=1, le=5000)
    """Most recent visible messages a side prompt reads when no range is given."""

    sideprompt_follow_chat: bool = True
    """Follow the live chat in SillyTavern's data directory for interval triggers."""

    @classmethod
    def from_settings(cls, settings: Any) -> SidePromptSettings:
        values = {n: getattr(settings, n) for n in cls.model_fields if hasattr(settings, n)}
        return cls(**values)
