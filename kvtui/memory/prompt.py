"""Memory prompts: presets (kvtui's built-ins and the user's), and the seed's two-part prompt.

Part one is the preset's instructions with ``{{user}}`` and ``{{char}}`` resolved. Part two is
the scene: an optional block of 0-7 earlier memories, clearly marked as context not to be
summarised, then the transcript, one ``Name: message`` line per message. The fixed instructions
come first so consecutive jobs in the same slot share a prompt prefix. An optional list of
(pattern, replacement) regexes is applied to the transcript before it is sent.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from kvtui.errors import KvtuiError
from kvtui.memory.contract import Memory
from kvtui.memory.library import TemplateLibrary
from kvtui.memory.scene import Scene


class Preset(BaseModel):
    """A memory prompt preset."""

    name: str
    description: str = ""
    prompt: str = Field(min_length=1)
    builtin: bool = False


_JSON_CONTRACT = """You must return ONLY valid JSON in exactly this shape, with no other text:
{
  "title": "a short scene title (1-4 words)",
  "content": "the memory text",
  "keywords": ["term", "term", "..."]
}"""

_BUILTINS = (
    Preset(
        name="Detailed summary",
        description="A thorough memory: timeline, events, interactions, details, outcome.",
        prompt=(
            "Analyze the chat scene below between {{user}} and {{char}} and write a detailed "
            "memory of it as JSON.\n\n" + _JSON_CONTRACT + "\n\n"
            "In content, cover in plain prose: when and where the scene happens; what happens, "
            "in order; what the characters say or decide that matters later; notable details "
            "(names, objects, places, promises); how the scene ends. Write in the past tense "
            "and the third person. Ignore out-of-character [OOC] text.\n"
            "In keywords, give 10 to 20 specific terms someone would use to recall this scene: "
            "names, places, objects, events. No generic words."
        ),
        builtin=True,
    ),
    Preset(
        name="Synopsis",
        description="A short paragraph: what happened and what changed.",
        prompt=(
            "Summarize the chat scene below between {{user}} and {{char}} as a short memory in "
            "JSON.\n\n" + _JSON_CONTRACT + "\n\n"
            "In content, write one paragraph of 3 to 6 sentences: what happened, what changed "
            "between the characters, and anything left open. Ignore [OOC] text.\n"
            "In keywords, give 5 to 12 specific names, places and events from the scene."
        ),
        builtin=True,
    ),
    Preset(
        name="Minimal",
        description="One or two sentences, for small models and tight contexts.",
        prompt=(
            "Write a memory of the scene below as JSON.\n\n" + _JSON_CONTRACT + "\n\n"
            "content: one or two sentences. keywords: 3 to 8 names or places."
        ),
        builtin=True,
    ),
)

DEFAULT_PRESET = "Synopsis"


def builtin_presets() -> list[Preset]:
    return [p.model_copy() for p in _BUILTINS]


def preset_library(memory_dir: Path) -> TemplateLibrary[Preset]:
    """The user's presets (``presets.json`` in kvtui's memory state directory)."""
    return TemplateLibrary(memory_dir / "presets.json", Preset, builtin_presets, kind="preset")


def resolve_macros(text: str, user: str, char: str) -> str:
    """``{{user}}`` and ``{{char}}`` (any case) replaced by the chat's names."""
    text = re.sub(r"\{\{\s*user\s*\}\}", lambda _: user, text, flags=re.I)
    return re.sub(r"\{\{\s*char\s*\}\}", lambda _: char, text, flags=re.I)


class RegexError(KvtuiError, ValueError):
    """An outgoing regex that does not compile."""


def apply_regexes(text: str, rules: Sequence[tuple[str, str]]) -> str:
    for pattern, replacement in rules:
        try:
            text = re.sub(pattern, replacement, text)
        except re.error as err:
            raise RegexError(
                f"The outgoing regex {pattern!r} is not valid ({err}); fix or remove it in the "
                "memory settings."
            ) from err
    return text


def previous_block(memories: Sequence[Memory]) -> list[str]:
    if not memories:
        return []
    lines = [
        "=== PREVIOUS SCENE CONTEXT (DO NOT SUMMARIZE) ===",
        "These are earlier memories, for context only. Do NOT include them in the new memory.",
        "",
    ]
    for n, memory in enumerate(memories, start=1):
        lines.append(f"Context {n} - {memory.title}:")
        lines.append(memory.content)
        if memory.keywords:
            lines.append(f"Keywords: {', '.join(memory.keywords)}")
        lines.append("")
    lines += ["=== END PREVIOUS SCENE CONTEXT - SUMMARIZE ONLY THE SCENE BELOW ===", ""]
    return lines


@dataclass(frozen=True)
class BuiltPrompt:
    text: str
    instructions: str
    scene_text: str


def build_prompt(
    preset: Preset,
    scene: Scene,
    previous: Sequence[Memory] = (),
    regexes: Sequence[tuple[str, str]] = (),
) -> BuiltPrompt:
    """The two-part prompt for ``scene`` (previous memories: oldest first, at most 7 used)."""
    instructions = resolve_macros(preset.prompt.strip(), scene.user, scene.char)
    transcript = apply_regexes("\n".join(scene.transcript()), regexes)
    lines = [
        *previous_block(list(previous)[-7:]),
        "=== SCENE TRANSCRIPT ===",
        transcript,
        "",
        "=== END SCENE ===",
    ]
    scene_text = "\n".join(lines)
    return BuiltPrompt(f"{instructions}\n\n{scene_text}\n", instructions, scene_text)
