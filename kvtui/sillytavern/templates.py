"""SillyTavern's Chat Completion control prompts, read from ``settings.json``, as matchers.

In a Chat Completion request the speaker of a group turn is named in one place only: the
group nudge, a system message built from ``oai_settings.group_nudge_prompt`` (default
``[Write the next reply only as {{char}}.]``) that SillyTavern appends after the chat history
(``public/scripts/openai.js``: ``populateChatHistory``; not for impersonation). A continue
adds ``oai_settings.continue_nudge_prompt`` after the message being continued (unless
``continue_prefill`` is on), an impersonation adds ``oai_settings.impersonation_prompt``.
All three are user-editable templates; :func:`template_regex` turns one into a regular
expression (``{{char}}`` captures the name, ``{{user}}`` and any other macro match anything).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_GROUP_NUDGE = "[Write the next reply only as {{char}}.]"
DEFAULT_CONTINUE_NUDGE = "[Continue your last message without repeating its original content.]"
DEFAULT_IMPERSONATION = (
    "[Write your next reply from the point of view of {{user}}, using the chat history so far "
    "as a guideline for the writing style of {{user}}. Don't write as {{char}} or system. "
    "Don't describe actions of {{char}}.]"
)

_MACRO = re.compile(r"\{\{\s*([A-Za-z_][\w]*)(?:::[^}]*)?\s*\}\}")
_TRAILING = 4  # how many messages from the end may hold a nudge


def _literal(text: str) -> str:
    """``text`` as a pattern in which any run of whitespace matches any run of whitespace."""
    return r"\s+".join(re.escape(part) for part in re.split(r"\s+", text))


def template_regex(template: str) -> re.Pattern[str] | None:
    """A full-match pattern for a template's text (group ``char`` captures ``{{char}}``).

    Whitespace runs match any whitespace; None for an empty template or one that is nothing
    but macros (it would match every message).
    """
    if not template.strip():
        return None
    parts: list[str] = []
    pos = 0
    seen_char = False
    literal = ""
    for m in _MACRO.finditer(template):
        chunk = template[pos : m.start()]
        literal += chunk
        parts.append(_literal(chunk))
        macro = m.group(1).lower()
        if macro == "char" and not seen_char:
            parts.append(r"(?P<char>.+?)")
            seen_char = True
        else:
            parts.append(r".*?")
        pos = m.end()
    chunk = template[pos:]
    literal += chunk
    parts.append(_literal(chunk))
    if not literal.strip():
        return None
    return re.compile(r"\s*" + "".join(parts) + r"\s*", re.DOTALL)


@dataclass(frozen=True)
class ControlPrompts:
    """The three Chat Completion control-prompt templates (SillyTavern's defaults if unset)."""

    group_nudge: str = DEFAULT_GROUP_NUDGE
    continue_nudge: str = DEFAULT_CONTINUE_NUDGE
    impersonation: str = DEFAULT_IMPERSONATION
    _patterns: dict[str, re.Pattern[str] | None] = field(
        default_factory=dict, compare=False, repr=False
    )

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> ControlPrompts:
        """Read the templates from a parsed ``settings.json`` (``oai_settings``)."""
        oai = settings.get("oai_settings") if isinstance(settings, Mapping) else None
        if not isinstance(oai, Mapping):
            return cls()

        def text(key: str, default: str) -> str:
            value = oai.get(key)
            return value if isinstance(value, str) else default

        return cls(
            text("group_nudge_prompt", DEFAULT_GROUP_NUDGE),
            text("continue_nudge_prompt", DEFAULT_CONTINUE_NUDGE),
            text("impersonation_prompt", DEFAULT_IMPERSONATION),
        )

    def pattern(self, which: str) -> re.Pattern[str] | None:
        if which not in self._patterns:
            self._patterns[which] = template_regex(str(getattr(self, which)))
        return self._patterns[which]


def content_text(content: object) -> str:
    """A message's ``content`` as text (OpenAI content parts joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    return ""


def _role(message: object) -> str:
    return str(message.get("role", "")) if isinstance(message, Mapping) else ""


def _names_in(text: str, members: Collection[str]) -> list[str]:
    found = []
    for name in members:
        if re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text):
            found.append(name)
    return found


def nudge_speaker(
    messages: Sequence[object],
    members: Collection[str] = (),
    prompts: ControlPrompts | None = None,
) -> tuple[str, int] | None:
    """The speaker a group nudge names, and that message's index.

    Looks at the system messages among the last few: one matching the nudge template gives its
    ``{{char}}``; without a template match, a system message naming exactly one of ``members``.
    """
    prompts = prompts or ControlPrompts()
    pattern = prompts.pattern("group_nudge")
    continue_pattern = prompts.pattern("continue_nudge")
    start = max(len(messages) - _TRAILING, 0)
    fallback: tuple[str, int] | None = None
    for i in range(len(messages) - 1, start - 1, -1):
        message = messages[i]
        if _role(message) == "user":
            break
        if _role(message) != "system":
            continue
        assert isinstance(message, Mapping)
        text = content_text(message.get("content"))
        if continue_pattern is not None and continue_pattern.fullmatch(text):
            continue
        if pattern is not None and (m := pattern.fullmatch(text)):
            name = m.groupdict().get("char")
            if name and name.strip():
                return name.strip(), i
        if fallback is None and members and len(found := _names_in(text, members)) == 1:
            fallback = found[0], i
    return fallback


@dataclass(frozen=True)
class ControlReading:
    """What the trailing control prompts of a Chat Completion request say."""

    messages: tuple[object, ...]
    """The messages without a continue nudge, so the continued message ends the list (open)."""
    speaker: str | None = None
    """The speaker the group nudge names (None outside groups or when no nudge names one)."""
    continuing: bool = False
    """A continue nudge follows an assistant message."""
    impersonating: bool = False
    """The impersonation prompt is among the last messages."""


def read_controls(
    messages: Sequence[object],
    members: Collection[str] = (),
    prompts: ControlPrompts | None = None,
) -> ControlReading:
    """Read the group nudge, continue nudge and impersonation prompt at the end of a request.

    The group nudge stays in place (it is part of every turn of that speaker, so swipes and
    new turns compare like for like); the continue nudge is dropped.
    """
    prompts = prompts or ControlPrompts()
    kept = list(messages)
    found = nudge_speaker(messages, members, prompts)
    continuing = impersonating = False
    cont = prompts.pattern("continue_nudge")
    imp = prompts.pattern("impersonation")
    for i in range(len(kept) - 1, max(len(kept) - _TRAILING, 0) - 1, -1):
        role = _role(kept[i])
        if role == "user":
            break
        if role != "system":
            continue
        message = kept[i]
        assert isinstance(message, Mapping)
        text = content_text(message.get("content"))
        if (
            cont is not None
            and cont.fullmatch(text)
            and i > 0
            and _role(kept[i - 1]) == "assistant"
        ):
            continuing = True
            del kept[i]
            break
        if imp is not None and imp.fullmatch(text):
            impersonating = True
            break
    return ControlReading(tuple(kept), found[0] if found else None, continuing, impersonating)
