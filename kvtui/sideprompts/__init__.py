"""Side prompts: trackers (plot points, status, cast, assessment) kept in a chat's lorebook.

The service layer (never imports textual): ``templates`` holds the template model, built-ins and
library; ``prompt`` builds the prompt (the preview is :class:`kvtui.memory.preview.TextPreview`);
``checkpoints`` keeps each template's last-seen message per chat; ``runs`` is what a run is and
ends with; ``planner`` decides a run's scene and prompt; ``service`` runs it (KV-safe, through
the memory job runner; ``override`` is a template's own server) and upserts the tracker entry,
with the after-memory batch and manual runs; ``interval`` is the interval trigger and
``follow`` runs it on the live chat in the background; ``cli`` is ``kvtui sideprompt``.
"""

from __future__ import annotations

from kvtui.memory.preview import TextPreview
from kvtui.sideprompts.interval import IntervalTrigger
from kvtui.sideprompts.prompt import build_prompt
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
