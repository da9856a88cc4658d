"""Version-tolerant models of llama-server's JSON answers (props, slots, slot actions, completion).

Every build of llama-server answers a little differently: fields appear only after a slot's first
task, ``next_token`` is a dict in some builds and a list of dicts in others, older builds use
other names (``state``, ``task_id``, ``slot_id``, ``stopped_eos``). These models accept all of them,
ignore fields they do not know, and leave missing ones ``None`` (or zero for counters).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator


class _Tolerant(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def _first_dict(value: Any) -> dict[str, Any]:
    """``next_token`` as one dict, whichever shape the build sent (dict, list of dicts, none)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                return item
    return {}


def _fill(out: dict[str, Any], key: str, value: Any) -> None:
    """Set ``out[key]`` from another source only when the answer itself did not carry it."""
    if out.get(key) is None and value is not None:
        out[key] = value


class Props(_Tolerant):
    """``GET /props``: how the server is set up."""

    total_slots: int
    n_ctx: int = 0
    """Context of ONE slot (``default_generation_settings.n_ctx``); 0 if the server did not say."""
    model: str = ""
    """``model_alias``, else ``model_path``."""
    build_info: str = "unknown"

    @model_validator(mode="before")
    @classmethod
    def _from_server(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        settings = data.get("default_generation_settings")
        if isinstance(settings, dict):
            _fill(out, "n_ctx", settings.get("n_ctx"))
        _fill(out, "model", data.get("model_alias") or data.get("model_path") or None)
        if out.get("build_info") is None:
            out.pop("build_info", None)
        return out


class SlotState(_Tolerant):
    """One entry of ``GET /slots``.

    A never-used slot carries only ``id``, ``n_ctx`` and ``is_processing``: the other fields are
    ``None`` until its first task (a restore into a never-used slot does not show up either).
    ``n_prompt_tokens`` is the number of tokens in the slot's cache.
    """

    id: int
    n_ctx: int = 0
    is_processing: bool = False
    n_prompt_tokens: int | None = None
    id_task: int | None = None
    n_decoded: int | None = None
    n_remain: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_server(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        token = _first_dict(data.get("next_token"))
        _fill(out, "n_decoded", token.get("n_decoded"))
        _fill(out, "n_remain", token.get("n_remain"))
        _fill(out, "id_task", data.get("task_id"))  # builds before mid-2024
        _fill(out, "n_prompt_tokens", data.get("n_past"))
        state = data.get("state")
        if out.get("is_processing") is None and isinstance(state, int):
            out["is_processing"] = state != 0  # old builds: 0 idle, 1 processing
        for key in ("n_ctx", "is_processing"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


def _timing(data: Any, key: str) -> dict[str, Any]:
    timings = data.get("timings")
    if isinstance(timings, dict) and key in timings:
        return {key: timings[key]}
    return {}


class SaveResult(_Tolerant):
    """``POST /slots/{id}?action=save``. ``n_saved == 0`` means the slot was empty."""

    id_slot: int
    filename: str
    n_saved: int
    n_written: int
    """Bytes written (equals the file size)."""
    save_ms: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_server(cls, data: Any) -> Any:
        if isinstance(data, dict) and "save_ms" not in data:
            return {**data, **_timing(data, "save_ms")}
        return data


class RestoreResult(_Tolerant):
    """``POST /slots/{id}?action=restore``."""

    id_slot: int
    filename: str
    n_restored: int
    n_read: int
    """Bytes read (equals the file size)."""
    restore_ms: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_server(cls, data: Any) -> Any:
        if isinstance(data, dict) and "restore_ms" not in data:
            return {**data, **_timing(data, "restore_ms")}
        return data


class EraseResult(_Tolerant):
    """``POST /slots/{id}?action=erase``."""

    id_slot: int
    n_erased: int


class Timings(_Tolerant):
    """``timings`` of a completion: ``cache_n`` tokens came from the slot's cache, ``prompt_n``
    tokens of the prompt were processed."""

    cache_n: int = 0
    prompt_n: int = 0
    prompt_ms: float = 0.0
    predicted_n: int = 0
    predicted_ms: float = 0.0


class CompletionResult(_Tolerant):
    """``POST /completion`` (not streamed)."""

    content: str = ""
    id_slot: int = -1
    """The slot that ran the task (-1 if the server did not say)."""
    tokens_cached: int | None = None
    timings: Timings = Timings()
    stop_type: str | None = None
    """``eos``, ``limit`` or ``word`` (``none`` if the generation was cut short)."""

    @model_validator(mode="before")
    @classmethod
    def _from_server(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        _fill(out, "id_slot", data.get("slot_id"))
        if out.get("stop_type") is None:
            for key, name in (("stopped_eos", "eos"), ("stopped_word", "word")):
                if data.get(key):
                    out["stop_type"] = name
            if out.get("stop_type") is None and data.get("stopped_limit"):
                out["stop_type"] = "limit"
        for key in ("id_slot", "timings", "content"):
            if out.get(key) is None:
                out.pop(key, None)
        return out


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> ``{name: value}`` (labels, when present, stay in the name).

    ``# HELP`` / ``# TYPE`` comments and unparsable lines are skipped.
    """
    metrics: dict[str, float] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if "}" in line:  # name{label="a b"} value [timestamp]
            name, _, rest = line.rpartition("}")
            name += "}"
            fields = rest.split()
        else:
            name, *fields = line.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        metrics[name] = value
    return metrics


def parse_sse_line(line: str) -> tuple[str, dict[str, Any]] | None:
    """One line of a Server-Sent Events stream -> ``("data" | "error", event)``, or None.

    Blank separator lines, ``: comments``, other fields and ``data: [DONE]`` give None.
    Raises ``ValueError`` for an event that is not JSON.
    """
    field, sep, value = line.partition(":")
    if not sep or field not in ("data", "error"):
        return None
    value = value.strip()
    if value == "[DONE]":
        return None
    event = json.loads(value)
    if not isinstance(event, dict):
        return None
    return field, event
