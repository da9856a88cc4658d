"""The proxy's door policy, rule by rule (the same rules are driven through the app elsewhere)."""

from __future__ import annotations

import pytest

from kvtui.proxy.guard import (
    Refusal,
    check_api_key,
    check_host,
    check_origin,
    cors_headers,
    host_name,
    parse_json_object,
    parse_slot_path,
    read_body,
    strip_cors,
)


@pytest.mark.parametrize(
    "header",
    ["127.0.0.1:8081", "localhost:8081", "LOCALHOST", "[::1]:8081", "127.5.6.7", "kvtui.localhost"],
)
def test_loopback_hosts_pass(header: str) -> None:
    assert check_host(header, "127.0.0.1") is None


@pytest.mark.parametrize(
    "header", ["evil.example:8081", "rebind.attacker.test", "127.0.0.1.nip.example:8081"]
)
def test_foreign_hosts_are_refused(header: str) -> None:
    refusal = check_host(header, "127.0.0.1")
    assert isinstance(refusal, Refusal) and refusal.status == 403
    assert "allowed_hosts" in refusal.message


def test_listen_address_and_allowed_hosts_pass() -> None:
    assert check_host("192.168.1.20:8081", "127.0.0.1") is None  # an address, not a name
    assert check_host("[::2]", "127.0.0.1") is None
    assert check_host("pc.lan:8081", "0.0.0.0", allowed=["PC.lan"]) is None
    assert check_host(None, "127.0.0.1") is None
    assert host_name("[::1]:8081") == "::1"


def test_origins() -> None:
    allowed = ["http://localhost:8000", "http://127.0.0.1:8000"]
    assert check_origin(None, allowed) is None
    assert check_origin("http://127.0.0.1:8000", allowed) is None
    assert check_origin("http://127.0.0.1:8000/", allowed) is None
    refusal = check_origin("https://evil.example", allowed)
    assert refusal is not None and refusal.status == 403 and "allowed_origins" in refusal.message
    assert check_origin("null", allowed) is not None
    assert cors_headers("https://evil.example", allowed) == []
    assert (b"access-control-allow-origin", b"http://localhost:8000") in cors_headers(
        "http://localhost:8000", allowed
    )
    upstream = [(b"Access-Control-Allow-Origin", b"*"), (b"content-type", b"application/json")]
    assert strip_cors(upstream) == [(b"content-type", b"application/json")]


def test_api_key_is_required_when_configured() -> None:
    assert check_api_key("/completion", {}, None) is None
    refusal = check_api_key("/completion", {}, "s3cret")
    assert refusal is not None and refusal.status == 401
    assert check_api_key("/completion", {"authorization": "Bearer wrong"}, "s3cret") is not None
    assert check_api_key("/completion", {"authorization": "Bearer s3cret"}, "s3cret") is None
    assert check_api_key("/completion", {"x-api-key": "s3cret"}, "s3cret") is None
    assert check_api_key("/health", {}, "s3cret") is None


@pytest.mark.parametrize(
    "raw",
    [
        "/slots/0abc",
        "/slots/0x1",
        "/slots/+0",
        "/slots/-1",
        "/slots/ 1",
        "/slots/1.0",
        "/slots/",
        "/slots/0/",
        "/slots//0",
        "/slots/%30",
        "/slots/1e1",
        "/slots/1234567",
        "/slots/٣",
    ],
)
def test_slot_ids_are_plain_digits(raw: str) -> None:
    from urllib.parse import unquote

    result = parse_slot_path(raw, unquote(raw))
    assert isinstance(result, Refusal) and result.status == 400


def test_plain_slot_ids_parse() -> None:
    assert parse_slot_path("/slots/0", "/slots/0") == 0
    assert parse_slot_path("/slots/12", "/slots/12") == 12


async def _feed(chunks: list[bytes]):  # type: ignore[no-untyped-def]
    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive() -> dict[str, object]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


async def test_body_limit() -> None:
    receive = await _feed([b"x" * 600, b"y" * 600])
    assert isinstance(await read_body(receive, 1000, None), Refusal)
    refused = await read_body(await _feed([b"{}"]), 1000, "5000")
    assert isinstance(refused, Refusal) and refused.status == 413
    assert await read_body(await _feed([b"ab", b"cd"]), 1000, "4") == b"abcd"
    assert isinstance(await read_body(await _feed([b"{}"]), 1000, "x"), Refusal)


@pytest.mark.parametrize(
    "body",
    [
        b'{"prompt": "\\ud800 lone"}',
        b'{"prompt": "ok", "x": NaN}',
        b'{"x": Infinity}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100 + b"1" + b"}" * 100,
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'{"n": 1' + b"0" * 5000 + b"}",
    ],
)
def test_unforwardable_json_is_a_400(body: bytes) -> None:
    result = parse_json_object(body, "/completion")
    assert isinstance(result, Refusal) and result.status == 400
    assert result.message.startswith("kvtui proxy:")


def test_good_json_passes() -> None:
    body = '{"prompt": "Серафина: привет 🌿", "stop": ["\\nAlex:"], "n": 1.5}'.encode()
    assert parse_json_object(body, "/completion") == {
        "prompt": "Серафина: привет 🌿",
        "stop": ["\nAlex:"],
        "n": 1.5,
    }
