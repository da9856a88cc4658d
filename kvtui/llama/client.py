"""The async client for llama-server: the only code in kvtui that speaks HTTP to it.

It validates what the server does not: slot ids are range-checked (the server wraps them modulo
the slot count), file names must be plain names, and a restore of a file not in the save
directory is refused (a failed restore wipes the slot). Save, restore and erase on a busy slot
block until it is idle, so they (and completions) have no read timeout; connecting times out.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from kvtui.llama import dropped
from kvtui.llama.checks import check_filename, check_slot, regular_file
from kvtui.llama.errors import (
    LlamaError,
    ModelLoading,
    NoSlotAvailable,
    SaveFileMissing,
    ServerError,
    ServerUnreachable,
    error_for_response,
    unreachable,
)
from kvtui.llama.models import (
    CompletionResult,
    EraseResult,
    Props,
    RestoreResult,
    SaveResult,
    SlotState,
    parse_metrics,
    parse_sse_line,
)

_Model = TypeVar("_Model", bound=BaseModel)


def _normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


class LlamaClient:
    """Async client for one llama-server (``async with LlamaClient(url) as client: ...``)."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        save_dir: Path | None = None,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = _normalize_url(base_url)
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.timeout = timeout
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout),
            transport=transport,
        )
        # Calls that may wait for a busy slot or a long generation: no read timeout.
        self._blocking = httpx.Timeout(timeout, read=None)
        self._total_slots: int | None = None

    @property
    def total_slots(self) -> int | None:
        """The slot count from the last ``props()`` (None before the first one)."""
        return self._total_slots

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> LlamaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- HTTP plumbing ------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        limits: httpx.Timeout | None = None,
    ) -> httpx.Response:
        try:
            return await dropped.request(self._http, method, path, body, limits)
        except (httpx.RequestError, httpx.InvalidURL) as err:
            self._total_slots = None  # it may come back with another -np
            raise unreachable(err, self.base_url, f"{method} {path}", self.timeout) from err

    def _fail(self, resp: httpx.Response, what: str, **context: Any) -> LlamaError:
        has_key = "Authorization" in self._http.headers
        return error_for_response(
            resp.status_code, resp.text, self.base_url, what, api_key=has_key, **context
        )

    def _json(self, resp: httpx.Response, what: str) -> Any:
        try:
            return resp.json()
        except ValueError as err:
            raise ServerError(
                f"llama-server at {self.base_url} answered {what} with something that is not "
                f"JSON: {resp.text[:120]!r}.",
                status=resp.status_code,
            ) from err

    def _model(self, model: type[_Model], data: Any, what: str) -> _Model:
        try:
            return model.model_validate(data)
        except ValidationError as err:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'answer'}: {e['msg']}"
                for e in err.errors()[:3]
            )
            raise ServerError(
                f"Unexpected answer from llama-server at {self.base_url} to {what} ({problems})."
            ) from err

    async def _get_json(self, path: str, **context: Any) -> Any:
        resp = await self._send("GET", path)
        if resp.status_code != 200:
            raise self._fail(resp, f"GET {path}", **context)
        return self._json(resp, f"GET {path}")

    # -- checks before the server sees a request ----------------------------------------------

    async def _check_slot(self, slot: int) -> None:
        total = self._total_slots
        if total is None and not isinstance(slot, bool) and isinstance(slot, int):
            total = (await self.props()).total_slots
        check_slot(slot, total or 0, self.base_url)

    # -- server state -------------------------------------------------------------------------

    async def health(self) -> Literal["ok", "loading"]:
        """``"ok"``, or ``"loading"`` while the model loads; raises ``ServerUnreachable``."""
        return await self._health(None)

    async def _health(self, limits: httpx.Timeout | None) -> Literal["ok", "loading"]:
        resp = await self._send("GET", "/health", limits=limits)
        if resp.status_code == 200:
            return "ok"
        error = self._fail(resp, "GET /health")
        if isinstance(error, NoSlotAvailable):  # up, only busy
            return "ok"
        if resp.status_code == 503:  # "Loading model" (older builds: {"status": "loading model"})
            return "loading"
        raise error

    async def props(self) -> Props:
        """``GET /props``; remembers ``total_slots`` for slot-id checks."""
        data = await self._get_json("/props")
        if isinstance(data, dict) and data.get("total_slots") is None:  # builds before mid-2024
            slots = await self.slots()
            data = {**data, "total_slots": len(slots)}
            if slots and not isinstance(data.get("default_generation_settings"), dict):
                data["n_ctx"] = slots[0].n_ctx
        props = self._model(Props, data, "GET /props")
        self._total_slots = props.total_slots
        return props

    async def slots(self) -> list[SlotState]:
        """``GET /slots``: one entry per slot."""
        data = await self._get_json("/slots", endpoint="slots")
        if not isinstance(data, list):
            raise ServerError(
                f"llama-server at {self.base_url} answered GET /slots with {type(data).__name__}, "
                "not a list."
            )
        slots = [self._model(SlotState, item, "GET /slots") for item in data]
        if slots:
            self._total_slots = len(slots)
        return slots

    async def metrics(self) -> dict[str, float] | None:
        """``GET /metrics`` as ``{name: value}``; None when the server runs without --metrics."""
        resp = await self._send("GET", "/metrics")
        if resp.status_code == 501:
            return None
        if resp.status_code != 200:
            raise self._fail(resp, "GET /metrics")
        return parse_metrics(resp.text)

    async def _post_json(self, path: str, body: dict[str, Any]) -> Any:
        resp = await self._send("POST", path, body=body)
        if resp.status_code != 200:
            raise self._fail(resp, f"POST {path}")
        return self._json(resp, f"POST {path}")

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of ``text`` (``add_special`` adds BOS, as a text prompt gets)."""
        data = await self._post_json("/tokenize", {"content": text, "add_special": add_special})
        tokens = data.get("tokens") if isinstance(data, dict) else None
        ids = [t.get("id") if isinstance(t, dict) else t for t in tokens or ()]  # with_pieces
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in ids):
            raise ServerError(f"llama-server at {self.base_url} sent no token list for /tokenize.")
        return [int(t) for t in ids if t is not None]

    async def apply_template(self, messages: list[Any]) -> str:
        """``POST /apply-template``: the prompt the server's chat template makes of
        ``messages`` (a last assistant message is left open, as a prefill)."""
        data = await self._post_json("/apply-template", {"messages": messages})
        prompt = data.get("prompt") if isinstance(data, dict) else None
        if not isinstance(prompt, str):
            raise ServerError(f"llama-server at {self.base_url} sent no /apply-template prompt.")
        return prompt

    async def wait_until_ready(self, timeout: float = 60.0) -> None:  # noqa: ASYNC109 - polls
        """Poll ``/health`` until 200; "loading" and connection refused are retried."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        delay = 0.05
        while True:
            remaining = deadline - loop.time()
            try:
                per_call = httpx.Timeout(max(0.2, min(self.timeout, remaining)))
                if await self._health(per_call) == "ok":
                    return
                last: LlamaError = ModelLoading(
                    f"llama-server at {self.base_url} was still loading its model after "
                    f"{timeout:g} s.",
                    "A big model can take minutes to load: wait longer, or check llama-server's "
                    "log for a loading error.",
                )
            except ServerUnreachable as err:
                last = ServerUnreachable(
                    f"llama-server at {self.base_url} did not become ready within {timeout:g} s: "
                    f"{err.message}",
                    err.hint,
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise last
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)

    # -- slot actions ---------------------------------------------------------------------------

    async def _slot_action(
        self, slot: int, action: str, body: dict[str, Any], **context: Any
    ) -> Any:
        path = f"/slots/{slot}?action={action}"
        resp = await self._send("POST", path, body=body, limits=self._blocking)
        if resp.status_code != 200:
            raise self._fail(resp, f"POST {path}", endpoint="action", slot=slot, **context)
        return self._json(resp, f"POST {path}")

    async def save(self, slot: int, filename: str) -> SaveResult:
        """Save slot ``slot`` to ``filename`` in the server's --slot-save-path.

        Overwrites an existing file of that name. Waits while the slot is busy (no read timeout).
        """
        check_filename(filename)
        await self._check_slot(slot)
        try:
            data = await self._slot_action(slot, "save", {"filename": filename}, filename=filename)
        except ServerError as err:
            if err.status == 500 and "unable to save" in err.message.lower():
                raise ServerError(  # what llama-server answers when its disk is full
                    err.message,
                    "llama-server could not write the file: is the disk holding its "
                    "--slot-save-path full or read-only? Free space there and save again.",
                    status=err.status,
                ) from err
            raise
        return self._model(SaveResult, data, "save")

    async def restore(self, slot: int, filename: str) -> RestoreResult:
        """Load ``filename`` into slot ``slot``. Waits while the slot is busy.

        With a ``save_dir``, a file that is not there is refused before the server sees it: a
        failed restore would clear the slot.
        """
        check_filename(filename)
        await self._check_slot(slot)
        if self.save_dir is not None:
            path = self.save_dir / filename
            if not await asyncio.to_thread(regular_file, path):
                raise SaveFileMissing(
                    f"{filename} is not a file in the save directory {self.save_dir} (symbolic "
                    "links are never loaded).",
                    f"Nothing was sent, so slot {slot} keeps its cache. Pick an existing save, "
                    "or check that kvtui's save directory is llama-server's --slot-save-path.",
                )
        data = await self._slot_action(
            slot, "restore", {"filename": filename}, filename=filename, restore=True
        )
        return self._model(RestoreResult, data, "restore")

    async def erase(self, slot: int) -> EraseResult:
        """Clear slot ``slot``'s cache. Waits while the slot is busy."""
        await self._check_slot(slot)
        return self._model(EraseResult, await self._slot_action(slot, "erase", {}), "erase")

    # -- generation -----------------------------------------------------------------------------

    async def _completion_body(
        self,
        prompt: str | list[int],
        n_predict: int,
        id_slot: int | None,
        cache_prompt: bool,
        extra: dict[str, Any],
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "prompt": prompt,
            "n_predict": n_predict,
            "cache_prompt": cache_prompt,
        }
        body.update(extra)
        if id_slot is not None:
            await self._check_slot(id_slot)
            body["id_slot"] = id_slot
        return body

    async def completion(
        self,
        prompt: str | list[int],
        *,
        n_predict: int = 1,
        id_slot: int | None = None,
        cache_prompt: bool = True,
        **extra: Any,
    ) -> CompletionResult:
        """``POST /completion`` (not streamed); ``extra`` keys go into the request body."""
        if extra.get("stream"):
            raise ValueError("completion() does not stream; use completion_stream().")
        body = await self._completion_body(prompt, n_predict, id_slot, cache_prompt, extra)
        body["stream"] = False
        resp = await self._send("POST", "/completion", body=body, limits=self._blocking)
        if resp.status_code != 200:
            raise self._fail(resp, "POST /completion")
        return self._model(CompletionResult, self._json(resp, "completion"), "POST /completion")

    async def completion_stream(
        self,
        prompt: str | list[int],
        *,
        n_predict: int = 1,
        id_slot: int | None = None,
        cache_prompt: bool = True,
        **extra: Any,
    ) -> AsyncIterator[dict[str, Any]]:
        """``POST /completion`` streamed: yields each Server-Sent Event as a dict (the last one
        has ``"stop": true`` and the ``timings``). Closing the iterator stops the generation."""
        body = await self._completion_body(prompt, n_predict, id_slot, cache_prompt, extra)
        body["stream"] = True
        what = "POST /completion (stream)"
        try:
            async with self._http.stream(
                "POST", "/completion", json=body, timeout=self._blocking
            ) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise self._fail(resp, what)
                async for line in resp.aiter_lines():
                    event = self._sse_event(line, what)
                    if event is not None:
                        yield event
        except (httpx.RequestError, httpx.InvalidURL) as err:
            raise unreachable(err, self.base_url, what, self.timeout) from err

    def _sse_event(self, line: str, what: str) -> dict[str, Any] | None:
        try:
            parsed = parse_sse_line(line)
        except ValueError as err:
            raise ServerError(
                f"llama-server at {self.base_url} sent a malformed event in {what}: {line[:120]!r}."
            ) from err
        if parsed is None:
            return None
        field, event = parsed
        if field == "error" or "error" in event:
            error = event.get("error")
            code = error.get("code") if isinstance(error, dict) else None
            status = code if isinstance(code, int) else 500
            raise error_for_response(status, json.dumps(event), self.base_url, what)
        return event
