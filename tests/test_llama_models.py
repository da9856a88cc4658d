"""Unit tests of the llama client layer: tolerant models, error mapping and pre-flight checks.

``httpx.MockTransport`` stands in only for answers a real server cannot easily be made to give
(old builds' JSON shapes, a 503 mid-poll, a 401, a broken connection); everything else is tested
against the real server in ``test_llama_client.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvtui.llama import (
    AuthenticationFailed,
    CompletionResult,
    InvalidFilename,
    LlamaClient,
    LlamaError,
    ModelLoading,
    NoSlotAvailable,
    Props,
    RestoreFailed,
    RestoreResult,
    SaveFileMissing,
    SaveResult,
    ServerError,
    ServerUnreachable,
    SlotActionsDisabled,
    SlotOutOfRange,
    SlotsEndpointDisabled,
    SlotState,
    filename_problem,
)
from kvtui.llama.errors import error_for_response, server_message
from kvtui.llama.models import parse_metrics, parse_sse_line

PROPS = {
    "default_generation_settings": {"params": {"n_predict": -1}, "n_ctx": 4096},
    "total_slots": 4,
    "model_alias": "tiny.gguf",
    "model_path": "/models/tiny.gguf",
    "build_info": "b0-unknown",
    "is_sleeping": False,
}


def _error(code: int, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "type": "x"}}


Handler = Callable[[httpx.Request], httpx.Response]


def mock_client(handler: Handler, **kwargs: Any) -> tuple[LlamaClient, list[httpx.Request]]:
    """A client whose every request goes to ``handler``; also returns the requests seen."""
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    client = LlamaClient("http://llama.test:8080/", transport=httpx.MockTransport(record), **kwargs)
    return client, seen


def routes(table: dict[str, Any]) -> Handler:
    """Answer ``GET /path`` / ``POST /path`` from ``table`` (values: (status, json) or json)."""

    def handler(request: httpx.Request) -> httpx.Response:
        answer = table.get(f"{request.method} {request.url.path}")
        if answer is None:
            return httpx.Response(404, json=_error(404, "File Not Found"))
        status, body = answer if isinstance(answer, tuple) else (200, answer)
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    return handler


# -- models -------------------------------------------------------------------------------------


def test_props_from_current_build() -> None:
    props = Props.model_validate(PROPS)
    assert (props.total_slots, props.n_ctx, props.model, props.build_info) == (
        4,
        4096,
        "tiny.gguf",
        "b0-unknown",
    )


def test_props_falls_back_to_model_path_and_tolerates_missing_fields() -> None:
    props = Props.model_validate({"total_slots": 2, "model_path": "/m/a.gguf", "model_alias": ""})
    assert (props.model, props.n_ctx, props.build_info) == ("/m/a.gguf", 0, "unknown")


def test_never_used_slot_has_no_task_fields() -> None:
    slot = SlotState.model_validate(
        {"id": 0, "n_ctx": 4096, "speculative": False, "is_processing": False}
    )
    assert slot.n_prompt_tokens is None and slot.id_task is None and slot.n_decoded is None
    assert not slot.is_processing


@pytest.mark.parametrize(
    "next_token",
    [
        [{"has_next_token": True, "n_remain": 2000, "n_decoded": 7}],  # current builds: a list
        {"has_next_token": True, "n_remain": 2000, "n_decoded": 7},  # older builds: a dict
    ],
)
def test_slot_next_token_as_list_or_dict(next_token: object) -> None:
    slot = SlotState.model_validate(
        {
            "id": 1,
            "n_ctx": 4096,
            "is_processing": True,
            "id_task": 62,
            "n_prompt_tokens": 2000,
            "params": {"temperature": 0.8},
            "next_token": next_token,
            "some_future_field": {"x": 1},
        }
    )
    assert (slot.n_decoded, slot.n_remain, slot.n_prompt_tokens, slot.id_task) == (
        7,
        2000,
        2000,
        62,
    )
    assert slot.is_processing


def test_slot_from_an_old_build() -> None:
    slot = SlotState.model_validate(
        {"id": 2, "n_ctx": 512, "state": 1, "task_id": 5, "n_past": 33, "next_token": []}
    )
    assert (slot.is_processing, slot.id_task, slot.n_prompt_tokens, slot.n_decoded) == (
        True,
        5,
        33,
        None,
    )


def test_slot_action_results_take_timings() -> None:
    saved = SaveResult.model_validate(
        {
            "id_slot": 2,
            "filename": "x.bin",
            "n_saved": 9,
            "n_written": 4864,
            "timings": {"save_ms": 0.187},
        }
    )
    assert (saved.n_saved, saved.n_written, saved.save_ms) == (9, 4864, 0.187)
    restored = RestoreResult.model_validate(
        {"id_slot": 2, "filename": "x.bin", "n_restored": 9, "n_read": 4864}
    )
    assert restored.restore_ms is None


def test_completion_result_current_and_old_shapes() -> None:
    current = CompletionResult.model_validate(
        {
            "content": " r",
            "id_slot": 2,
            "stop_type": "limit",
            "tokens_cached": 9,
            "timings": {"cache_n": 0, "prompt_n": 9, "prompt_ms": 3.03, "predicted_n": 1},
        }
    )
    assert (current.timings.prompt_n, current.timings.cache_n, current.tokens_cached) == (9, 0, 9)
    old = CompletionResult.model_validate(
        {"content": "x", "slot_id": 1, "stopped_eos": True, "timings": {"prompt_n": 3}}
    )
    assert (old.id_slot, old.stop_type, old.timings.cache_n) == (1, "eos", 0)
    bare = CompletionResult.model_validate({"content": "x", "timings": None})
    assert bare.id_slot == -1 and bare.timings.prompt_n == 0


def test_parse_metrics() -> None:
    text = (
        "# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.\n"
        "# TYPE llamacpp:prompt_tokens_total counter\n"
        "llamacpp:prompt_tokens_total 11038\n"
        "llamacpp:n_busy_slots_per_decode 0.5\n"
        'http_requests{code="200",path="/a b"} 3 1700000000\n'
        "garbage line here\n"
        "\n"
    )
    assert parse_metrics(text) == {
        "llamacpp:prompt_tokens_total": 11038.0,
        "llamacpp:n_busy_slots_per_decode": 0.5,
        'http_requests{code="200",path="/a b"}': 3.0,
    }


def test_parse_sse_line() -> None:
    assert parse_sse_line('data: {"content": "a", "stop": false}') == (
        "data",
        {"content": "a", "stop": False},
    )
    assert parse_sse_line("") is None
    assert parse_sse_line(": keep-alive") is None
    assert parse_sse_line("data: [DONE]") is None
    assert parse_sse_line('error: {"error": {"code": 500}}') == ("error", {"error": {"code": 500}})


# -- checks and errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "../x.bin", "a/b.bin", "a\\b.bin", "..", ".", "a..b", "x.", " x.bin", "x.bin ", "a:b",
     "a|b", "a\x00b", "a\nb", "x" * 256],
)  # fmt: skip
def test_bad_file_names_are_refused(name: str) -> None:
    assert filename_problem(name) is not None


@pytest.mark.parametrize(
    "name",
    ["x.bin", "chat_20240101120000_character_Seraphina.bin", "чат_tag_важный_момент.bin",
     "with space.bin", ".hidden.bin"],
)  # fmt: skip
def test_plain_file_names_pass(name: str) -> None:
    assert filename_problem(name) is None


def test_str_of_an_error_includes_its_hint() -> None:
    err = SlotActionsDisabled("llama-server at X cannot save.")
    assert err.message == "llama-server at X cannot save."
    assert "--slot-save-path" in err.hint and "--slot-save-path" in str(err)
    assert str(err).startswith(err.message)
    assert str(LlamaError("bare")) == "bare"
    for cls in (ServerUnreachable, ModelLoading, SlotsEndpointDisabled, InvalidFilename,
                RestoreFailed, AuthenticationFailed, NoSlotAvailable, ServerError):  # fmt: skip
        assert cls("x").hint, f"{cls.__name__} has no default hint"


@pytest.mark.parametrize(
    ("status", "message", "context", "expected"),
    [
        (503, "Loading model", {}, ModelLoading),
        (503, "no slot available", {}, NoSlotAvailable),
        (401, "Invalid API Key", {}, AuthenticationFailed),
        (501, "This server does not support slots endpoint.", {"endpoint": "slots"},
         SlotsEndpointDisabled),
        (501, "This server does not support slots action. Start it with `--slot-save-path`",
         {"endpoint": "action"}, SlotActionsDisabled),
        (400, "Invalid filename", {"endpoint": "action", "filename": "a/b"}, InvalidFilename),
        (400, "Unable to restore slot: No available space in KV cache or invalid slot save file",
         {"endpoint": "action", "restore": True, "slot": 2, "filename": "m.bin"}, RestoreFailed),
        (400, "Invalid action", {"endpoint": "action"}, ServerError),
        (404, "File Not Found", {}, ServerError),
        (500, "boom", {}, ServerError),
    ],
)  # fmt: skip
def test_error_mapping(
    status: int, message: str, context: dict[str, Any], expected: type[LlamaError]
) -> None:
    err = error_for_response(
        status, json.dumps(_error(status, message)), "http://h", "X", **context
    )
    assert type(err) is expected
    assert err.status == status
    assert err.hint, "every error says what to do"


def test_server_message_shapes() -> None:
    assert server_message('{"error": {"message": "Loading model"}}') == "Loading model"
    assert server_message('{"error": "old style"}') == "old style"
    assert server_message('{"status": "loading model"}') == "loading model"
    assert server_message("<html>  Bad   Gateway </html>") == "<html> Bad Gateway </html>"


# -- the client against shapes a real server cannot easily give ---------------------------------


async def test_bearer_token_and_401() -> None:
    client, seen = mock_client(
        routes({"GET /props": (401, _error(401, "Invalid API Key"))}), api_key="k"
    )
    async with client:
        with pytest.raises(AuthenticationFailed) as info:
            await client.props()
    assert seen[0].headers["Authorization"] == "Bearer k"
    assert "refused kvtui's API key" in str(info.value) and "--api-key" in str(info.value)


async def test_no_authorization_header_without_a_key() -> None:
    client, seen = mock_client(routes({"GET /health": {"status": "ok"}}))
    async with client:
        assert await client.health() == "ok"
    assert "Authorization" not in seen[0].headers
    assert str(seen[0].url) == "http://llama.test:8080/health"


async def test_health_loading_is_a_state() -> None:
    loading = (503, _error(503, "Loading model"))
    client, _ = mock_client(routes({"GET /health": loading, "GET /slots": loading}))
    async with client:
        assert await client.health() == "loading"
        with pytest.raises(ModelLoading):
            await client.slots()


async def test_health_of_old_builds() -> None:
    client, _ = mock_client(routes({"GET /health": (503, {"status": "loading model"})}))
    async with client:
        assert await client.health() == "loading"
    client, _ = mock_client(routes({"GET /health": (500, {"status": "error"})}))
    async with client:
        with pytest.raises(ServerError):
            await client.health()


async def test_503_mid_poll_then_recovery() -> None:
    answers = iter(
        [
            (200, [{"id": 0, "n_ctx": 1024, "is_processing": False}]),
            (503, _error(503, "Loading model")),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        status, body = next(answers, (200, [{"id": 0, "n_ctx": 1024, "is_processing": False}]))
        return httpx.Response(status, json=body)

    client, _ = mock_client(handler)
    async with client:
        assert len(await client.slots()) == 1
        with pytest.raises(ModelLoading):
            await client.slots()
        assert len(await client.slots()) == 1


async def test_props_without_total_slots_counts_slots() -> None:
    old_props = {"model_path": "m.gguf"}
    slots = [{"id": i, "n_ctx": 512, "state": 0} for i in range(3)]
    client, _ = mock_client(routes({"GET /props": old_props, "GET /slots": slots}))
    async with client:
        props = await client.props()
    assert (props.total_slots, props.n_ctx, props.model) == (3, 512, "m.gguf")


async def test_slot_ids_are_checked_with_props_fetched_once() -> None:
    client, seen = mock_client(
        routes(
            {
                "GET /props": PROPS,
                "POST /slots/3": {"id_slot": 3, "n_erased": 0},
            }
        )
    )
    async with client:
        for bad in (4, 99, -1):
            with pytest.raises(SlotOutOfRange) as info:
                await client.erase(bad)
            assert "0 to 3" in str(info.value)
        assert (await client.erase(3)).id_slot == 3
        with pytest.raises(SlotOutOfRange):
            await client.completion("hi", id_slot=4)
    assert [f"{r.method} {r.url.path}" for r in seen] == ["GET /props", "POST /slots/3"]
    assert seen[1].url.params["action"] == "erase"


async def test_bad_filename_and_missing_file_never_reach_the_server(tmp_path: Path) -> None:
    client, seen = mock_client(routes({"GET /props": PROPS}), save_dir=tmp_path)
    async with client:
        with pytest.raises(InvalidFilename):
            await client.save(0, "../x.bin")
        with pytest.raises(InvalidFilename):
            await client.restore(0, "")
        with pytest.raises(SaveFileMissing) as info:
            await client.restore(1, "gone.bin")
    assert "slot 1 keeps its cache" in str(info.value)
    assert [r.url.path for r in seen] == ["/props"]


async def test_slots_endpoint_and_actions_disabled_and_metrics_off() -> None:
    client, _ = mock_client(
        routes(
            {
                "GET /props": PROPS,
                "GET /slots": (501, _error(501, "This server does not support slots endpoint.")),
                "POST /slots/0": (501, _error(501, "Start it with `--slot-save-path`")),
                "GET /metrics": (501, _error(501, "Start it with `--metrics`")),
            }
        )
    )
    async with client:
        with pytest.raises(SlotsEndpointDisabled, match="--slots"):
            await client.slots()
        with pytest.raises(SlotActionsDisabled, match="--slot-save-path"):
            await client.save(0, "x.bin")
        assert await client.metrics() is None


async def test_unexpected_answers_become_server_errors() -> None:
    client, _ = mock_client(
        routes({"GET /props": "<html>not json</html>", "GET /slots": {"not": "a list"}})
    )
    async with client:
        with pytest.raises(ServerError, match="not JSON"):
            await client.props()
        with pytest.raises(ServerError, match="not a list"):
            await client.slots()
    client, _ = mock_client(routes({"GET /props": {"model_path": "m"}, "GET /slots": [{"x": 1}]}))
    async with client:
        with pytest.raises(ServerError, match="Unexpected answer"):
            await client.props()


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), "broke"),
        (httpx.ReadError("Connection reset by peer"), "broke"),
        (httpx.ConnectError("All connection attempts failed"), "No llama-server answers"),
        (httpx.ReadTimeout("timed out"), "did not answer"),
    ],
)
async def test_transport_failures_become_server_unreachable(exc: Exception, words: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    client, _ = mock_client(handler)
    async with client:
        with pytest.raises(ServerUnreachable) as info:
            await client.props()
    assert words in info.value.message
    assert "llama-server" in info.value.hint


async def test_wait_until_ready_retries_loading() -> None:
    answers = iter([(503, _error(503, "Loading model"))] * 2)

    def handler(request: httpx.Request) -> httpx.Response:
        status, body = next(answers, (200, {"status": "ok"}))
        return httpx.Response(status, json=body)

    client, seen = mock_client(handler)
    async with client:
        await client.wait_until_ready(timeout=5)
    assert len(seen) == 3


async def test_wait_until_ready_times_out_while_loading() -> None:
    client, _ = mock_client(routes({"GET /health": (503, _error(503, "Loading model"))}))
    async with client:
        with pytest.raises(ModelLoading, match="still loading its model after 0.3 s"):
            await client.wait_until_ready(timeout=0.3)


async def test_stream_error_event_is_raised() -> None:
    body = (
        'data: {"content": "a", "stop": false}\n\n'
        'error: {"error": {"code": 500, "message": "boom"}}\n\n'
    )
    client, _ = mock_client(routes({"POST /completion": (200, body)}))
    async with client:
        events: list[dict[str, Any]] = []
        with pytest.raises(ServerError, match="boom"):
            async for event in client.completion_stream("hi"):
                events.append(event)
    assert events == [{"content": "a", "stop": False}]


async def test_completion_refuses_stream_flag() -> None:
    client, seen = mock_client(routes({}))
    async with client:
        with pytest.raises(ValueError, match="completion_stream"):
            await client.completion("hi", stream=True)
    assert seen == []


async def test_completion_body_merges_extra() -> None:
    answer = {"content": "x", "id_slot": 0, "timings": {"prompt_n": 2, "cache_n": 1}}
    client, seen = mock_client(routes({"GET /props": PROPS, "POST /completion": answer}))
    async with client:
        result = await client.completion([65, 66], n_predict=3, id_slot=0, temperature=0.0)
    body = json.loads(seen[-1].content)
    assert body == {
        "prompt": [65, 66],
        "n_predict": 3,
        "cache_prompt": True,
        "temperature": 0.0,
        "id_slot": 0,
        "stream": False,
    }
    assert result.timings.cache_n == 1


async def test_tokenize_with_pieces_shape() -> None:
    pieces = {"tokens": [{"id": 72, "piece": "H"}, {"id": 105, "piece": "i"}]}
    client, seen = mock_client(routes({"POST /tokenize": pieces}))
    async with client:
        assert await client.tokenize("Hi") == [72, 105]
    assert json.loads(seen[0].content) == {"content": "Hi", "add_special": False}
