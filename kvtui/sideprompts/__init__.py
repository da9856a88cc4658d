"""Side prompts: trackers (plot points, status, cast, assessment) kept in a chat's lorebook.

The service layer (never imports textual): ``templates`` holds the template model, built-ins and
library; ``prompt`` builds the prompt and the plain-text preview; ``checkpoints`` keeps each
template's last-seen message per chat; ``service`` plans, runs (KV-safe, through the memory job
runner) and upserts the tracker entry, with the after-memory batch and manual runs; ``interval``
is the interval trigger on the live chat; ``cli`` is ``kvtui sideprompt``.
"""

from __future__ import annotations

from kvtui.sideprompts.interval import IntervalTrigger
from kvtui.sideprompts.prompt import TextPreview, build_prompt
from kvtui.sideprompts.service import (
    Decide,
    SideOutcome,
    SidePromptRefused,
    SidePromptService,
    SideRun,
)
from kvtui.sideprompts.settings import SidePromptSettings
from kvtui.sideprompts.templates import (
    LoreMode,
    LoreSettings,
    SidePrompt,
    Triggers,
    builtin_templates,
    entry_title,
    template_library,
)

__all__ = [
    "Decide",
    "IntervalTrigger",
    "LoreMode",
    "LoreSettings",
    "SideOutcome",
    "SidePrompt",
    "SidePromptRefused",
    "SidePromptService",
    "SidePromptSettings",
    "SideRun",
    "TextPreview",
    "Triggers",
    "build_prompt",
    "builtin_templates",
    "entry_title",
    "template_library",
]
