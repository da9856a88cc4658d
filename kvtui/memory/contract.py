"""The memory contract: the JSON schema sent to llama-server and the forgiving reply parser.

A memory is ``{"title": str, "content": str, "keywords": [str, ...]}``. The schema is kept free of
``pattern`` and ``format`` (llama-server can silently fail to compile them and then generates
unconstrained text); lengths are bounded so a grammar-driven reply always fits ``n_predict``.

Whatever the grammar promised, every reply goes through :func:`parse_memory`, which also copes
with servers or models that ignore the grammar:

* ``<think>…</think>`` blocks (and a dangling ``</think>``), a BOM and code fences are removed;
* candidates are tried in order: each fenced block, the whole text, every balanced ``{…}`` found
  in surrounding prose;
* each candidate is parsed as JSON, then repaired and parsed again: ``//`` and ``/* */`` comments
  dropped, trailing commas dropped, bare keys quoted, control characters escaped;
* ``summary`` or ``memory_content`` is accepted for ``content``; ``keywords`` must be a list of
  strings (numbers are turned into strings, blank ones dropped, duplicates removed); a single
  comma-separated string is also accepted and split on commas — that is the one documented
  leniency beyond STMB's.

Failures raise :class:`MemoryReplyError` with one of the seed's codes and a hint that says what to
try: ``NO_JSON_BLOCK``, ``UNBALANCED`` (an object was opened and never closed),
``INCOMPLETE_SENTENCE`` (the reply stops inside a string: cut mid-sentence), ``MALFORMED``
(balanced but not JSON even after repair), ``MISSING_FIELDS_TITLE``, ``MISSING_FIELDS_CONTENT``,
``INVALID_KEYWORDS``, and ``TRUNCATED`` (the server stopped on its ``n_predict`` limit).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kvtui.errors import KvtuiError


class ReplyCode(StrEnum):
    NO_JSON_BLOCK = "NO_JSON_BLOCK"
    UNBALANCED = "UNBALANCED"
    INCOMPLETE_SENTENCE = "INCOMPLETE_SENTENCE"
    MALFORMED = "MALFORMED"
    MISSING_FIELDS_TITLE = "MISSING_FIELDS_TITLE"
    MISSING_FIELDS_CONTENT = "MISSING_FIELDS_CONTENT"
    INVALID_KEYWORDS = "INVALID_KEYWORDS"
    TRUNCATED = "TRUNCATED"


_HINTS = {
    ReplyCode.NO_JSON_BLOCK: "The model answered in prose. Retry; if it keeps happening, use a "
    "preset that asks for JSON only, or a model that follows instructions better.",
    ReplyCode.UNBALANCED: "The JSON was cut off. Retry, raise memory_n_predict, or summarise a "
    "shorter range.",
    ReplyCode.INCOMPLETE_SENTENCE: "The reply stops mid-sentence inside the JSON (cut off). Raise "
    "memory_n_predict or lower memory_max_content_chars, then retry.",
    ReplyCode.MALFORMED: "The reply looks like JSON but cannot be read. Retry, or edit the "
    "reply's text into valid JSON in the preview.",
    ReplyCode.MISSING_FIELDS_TITLE: "The reply has no title. Retry, or use a preset that names "
    'the "title" field.',
    ReplyCode.MISSING_FIELDS_CONTENT: 'The reply has no "content" (nor "summary"). Retry, or use '
    "a preset that names the content field.",
    ReplyCode.INVALID_KEYWORDS: 'The "keywords" must be a list of non-empty strings. Retry, or '
    "add keywords in the preview.",
    ReplyCode.TRUNCATED: "The server stopped at its token limit before the memory was complete. "
    "Raise memory_n_predict, lower memory_max_content_chars, or pick a shorter range.",
}


class MemoryReplyError(KvtuiError, ValueError):
    """A reply that is not a valid memory; ``code`` is one of :class:`ReplyCode`."""

    def __init__(self, code: ReplyCode, detail: str) -> None:
        self.code = code
        self.detail = detail
        super().__init__(f"{code.value}: {detail}", _HINTS[code])


@dataclass(frozen=True)
class Memory:
    """One scene memory, as accepted (or edited) in the preview."""

    title: str
    content: str
    keywords: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {"title": self.title, "content": self.content, "keywords": list(self.keywords)}


def memory_schema(
    max_title: int = 60, max_content: int = 2000, max_keywords: int = 20
) -> dict[str, Any]:
    """The top-level ``json_schema`` of a memory job (no ``pattern``, no ``format``)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["title", "content", "keywords"],
        "properties": {
            "title": {"type": "string", "minLength": 1, "maxLength": max_title},
            "content": {"type": "string", "minLength": 1, "maxLength": max_content},
            "keywords": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 32},
                "minItems": 1,
                "maxItems": max_keywords,
            },
        },
    }


# -- cleaning -------------------------------------------------------------------------------------

_THINK = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.I | re.S)
_THINK_CLOSE = re.compile(r"^.*?</(?:think|thinking|reasoning)>", re.I | re.S)
_FENCE = re.compile(r"```[A-Za-z0-9_-]*[ \t]*\n?(.*?)(?:```|\Z)", re.S)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean(text: str) -> str:
    text = text.replace("\ufeff", "")
    text = _THINK.sub("", text)
    if _THINK_CLOSE.search(text) and "<think" not in text.lower():
        text = _THINK_CLOSE.sub("", text, count=1)  # the opener was in the prompt
    text = re.sub(r"<(?:think|thinking|reasoning)>", "", text, flags=re.I)
    return text.strip()


def clean_reply(text: str) -> str:
    """A reply without ``<think>`` blocks and a BOM, stripped (also for free-text replies)."""
    return _clean(text or "")


def _balanced_objects(text: str) -> list[str]:
    """Every top-level balanced ``{…}`` in ``text`` (strings respected)."""
    found: list[str] = []
    depth, start, in_string, escaped = 0, -1, False, False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and depth > 0:
            in_string = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                found.append(text[start : i + 1])
    return found


def _scan_state(text: str) -> tuple[int, bool]:
    """(open brackets at the end, ended inside a string) from the first ``{``."""
    start = text.find("{")
    depth, in_string, escaped = 0, False, False
    for ch in text[start:] if start >= 0 else "":
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth = max(0, depth - 1)
    return depth, in_string


def _last_significant(out: list[str]) -> str:
    for piece in reversed(out):
        stripped = piece.strip()
        if stripped:
            return stripped[-1]
    return ""


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _repair(text: str) -> str:
    """Comments out, trailing commas out, bare keys quoted, control characters escaped.

    One pass that tracks strings, so nothing inside a string value is touched.
    """
    out: list[str] = []
    i, n = 0, len(text)
    in_string, escaped = False, False
    while i < n:
        ch = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            elif _CONTROL.match(ch) or ch in "\n\r\t":
                ch = json.dumps(ch)[1:-1]
            out.append(ch)
            i += 1
            continue
        if ch == '"':
            in_string = True
        elif text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
            continue
        elif ch in "}]":
            while out and not out[-1].strip():
                out.pop()
            if out and out[-1] == ",":
                out.pop()
        elif _IDENT.match(ch) and _last_significant(out) in ("{", ","):
            match = _IDENT.match(text, i)
            assert match is not None
            rest = text[match.end() :].lstrip(" \t")
            if rest.startswith(":"):
                out.append(f'"{match.group()}"')
                i = match.end()
                continue
        elif _CONTROL.match(ch):
            i += 1
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _load(candidate: str) -> Any:
    for text in (candidate, _repair(candidate)):
        try:
            return json.loads(text, strict=False)
        except ValueError:
            continue
    raise ValueError("not JSON")


# -- validation -----------------------------------------------------------------------------------


def _text(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        return ""
    return _CONTROL.sub("", value).replace("\r\n", "\n").strip()


def _keywords(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[Any] = re.split(r"[,\n]", value)
    elif isinstance(value, list):
        items = value
    else:
        what = "missing" if value is None else f"a {type(value).__name__}"
        raise MemoryReplyError(ReplyCode.INVALID_KEYWORDS, f'"keywords" is {what}.')
    seen: dict[str, str] = {}
    for item in items:
        if isinstance(item, dict | list):
            raise MemoryReplyError(
                ReplyCode.INVALID_KEYWORDS, '"keywords" holds something that is not a string.'
            )
        word = _text(item)
        if word and word.casefold() not in seen:
            seen[word.casefold()] = word
    if not seen:
        raise MemoryReplyError(ReplyCode.INVALID_KEYWORDS, '"keywords" has no non-empty string.')
    return tuple(seen.values())


def validate_memory(data: Any) -> Memory:
    """A :class:`Memory` from parsed JSON, or :class:`MemoryReplyError`."""
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise MemoryReplyError(ReplyCode.MALFORMED, f"The JSON is a {type(data).__name__}.")
    title = _text(data.get("title"))
    if not title:
        raise MemoryReplyError(ReplyCode.MISSING_FIELDS_TITLE, 'No "title".')
    content = ""
    for key in ("content", "summary", "memory_content"):
        content = _text(data.get(key))
        if content:
            break
    if not content:
        raise MemoryReplyError(ReplyCode.MISSING_FIELDS_CONTENT, 'No "content".')
    return Memory(title, content, _keywords(data.get("keywords")))


def parse_memory(text: str, *, stop_type: str | None = None, truncated: bool = False) -> Memory:
    """The memory in a model's reply; raises :class:`MemoryReplyError` (see the module doc)."""
    cleaned = _clean(text or "")
    candidates = [m.group(1).strip() for m in _FENCE.finditer(cleaned)]
    unfenced = _FENCE.sub(lambda m: m.group(1), cleaned).strip()
    candidates += [unfenced, *_balanced_objects(unfenced)]
    first_problem: MemoryReplyError | None = None
    for candidate in candidates:
        if "{" not in candidate:
            continue
        try:
            data = _load(candidate)
        except ValueError:
            continue
        try:
            return validate_memory(data)
        except MemoryReplyError as err:
            first_problem = first_problem or err
    limited = truncated or stop_type == "limit"
    if first_problem is not None and not limited:
        raise first_problem
    if limited:
        raise MemoryReplyError(
            ReplyCode.TRUNCATED, "The reply stopped at the server's token limit."
        )
    if "{" not in unfenced:
        shown = unfenced[:60].replace("\n", " ")
        detail = f"The reply has no JSON object ({shown!r})." if shown else "The reply is empty."
        raise MemoryReplyError(ReplyCode.NO_JSON_BLOCK, detail)
    depth, in_string = _scan_state(unfenced)
    if in_string:
        raise MemoryReplyError(ReplyCode.INCOMPLETE_SENTENCE, "The reply ends inside a string.")
    if depth > 0:
        raise MemoryReplyError(ReplyCode.UNBALANCED, f"{depth} bracket(s) were never closed.")
    raise MemoryReplyError(ReplyCode.MALFORMED, "The JSON object cannot be parsed.")
