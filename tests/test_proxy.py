"""The routing proxy's transport, against the real embedded llama-server.

Streams pass through unchanged, a client that goes away stops the generation, and bad requests or
a missing llama-server give clear HTTP errors without stopping the proxy. The helpers at the top
(SillyTavern-shaped request bodies, a proxy running in the test's event loop) are shared by the
other proxy tests.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvtui.embedded.server import EmbeddedServer, free_port
from kvtui.proxy.run import ProxyServer, ProxyStartError, bind_socket
from kvtui.service import KvService, PromptRecorder
from kvtui.settings import Settings

USER = "Alex"

# SillyTavern's text-completion body for llama.cpp (reference/sillytavern.md §6.3), with greedy
# sampling and a fixed seed so replies are reproducible.
ST_BODY: dict[str, Any] = {
    "model": "", "max_new_tokens": 8, "max_tokens": 8,
    "temperature": 0, "top_p": 0.5, "typical_p": 1, "typical": 1, "min_p": 0,
    "repetition_penalty": 1.2, "frequency_penalty": 0, "presence_penalty": 0, "top_k": 40,
    "skew": 0, "min_tokens": 0, "add_bos_token": True, "smoothing_factor": 0,
    "smoothing_curve": 1, "dry_allowed_length": 2, "dry_multiplier": 0, "dry_base": 1.75,
    "dry_penalty_last_n": 0, "max_tokens_second": 0,
    "samplers": ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc",
                 "temperature", "adaptive_p"],
    "truncation_length": 8192, "ban_eos_token": False, "skip_special_tokens": True,
    "include_reasoning": True, "top_a": 0, "tfs": 1, "mirostat_mode": 0, "mirostat_tau": 5,
    "mirostat_eta": 0.1, "custom_token_bans": "", "banned_strings": [],
    "api_type": "llamacpp", "api_server": "http://127.0.0.1:8081",
    "xtc_threshold": 0.1, "xtc_probability": 0, "nsigma": 0, "top_n_sigma": 0, "min_keep": 0,
    "n": 1, "rep_pen": 1.2, "rep_pen_range": 0, "repetition_penalty_range": 0,
    "guidance_scale": 1, "negative_prompt": "", "repeat_penalty": 1.2, "repeat_last_n": 0,
    "n_predict": 8, "num_predict": 8, "num_ctx": 8192, "mirostat": 0, "ignore_eos": False,
    "rep_pen_slope": 1, "logit_bias": [], "grammar": "", "cache_prompt": True,
    "dry_sequence_breakers": ["\n", ":", '"', "*"], "seed": 1,
}  # fmt: skip


def st_body(
    prompt: str, stop: list[str], *, stream: bool = False, n_predict: int = 8
) -> dict[str, Any]:
    """A request body exactly as SillyTavern sends it to llama.cpp's ``/completion``."""
    body = dict(ST_BODY, prompt=prompt, stop=stop, stopping_strings=stop, stream=stream)
    for key in ("max_new_tokens", "max_tokens", "n_predict", "num_predict"):
        body[key] = n_predict
    return body


def card(name: str) -> str:
    return (
        f"{name} is a member of the Forest Party, a band of travelers in the Eldoria woods. "
        f"{name}'s personality: loyal, curious.\nScenario: the party camps by the river.\n***\n"
    )


def st_prompt(speaker: str, lines: list[tuple[str, str]]) -> str:
    """A non-instruct SillyTavern prompt: story string, chat lines, ``\\nSpeaker:`` tail."""
    return card(speaker) + "".join(f"{name}: {text}\n" for name, text in lines) + f"{speaker}:"


def group_stop(speaker: str, members: list[str]) -> list[str]:
    """SillyTavern's group stop strings: the user and every member but the speaker."""
    return [f"\n{USER}:"] + [f"\n{m}:" for m in members if m != speaker]


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    events = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: ") and block[6:].strip() != b"[DONE]":
            events.append(json.loads(block[6:]))
    return events


async def complete(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    """Send a generation through the proxy; the final JSON (the stream's last event)."""
    if not body.get("stream"):
        resp = await client.post("/completion", json=body)
        assert resp.status_code == 200, resp.text
        result: dict[str, Any] = resp.json()
        return result
    async with client.stream("POST", "/completion", json=body) as resp:
        assert resp.status_code == 200
        raw = b"".join([chunk async for chunk in resp.aiter_raw()])
    return sse_events(raw)[-1]


@dataclass
class Harness:
    """A running proxy, its service, and a client for it."""

    proxy: ProxyServer
    service: KvService
    client: httpx.AsyncClient

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """A generation through the proxy, once kvtui's bookkeeping of it is done too."""
        result = await complete(self.client, body)
        await self.proxy.app.settled()
        return result


async def server_call(server: EmbeddedServer, method: str, path: str) -> Any:
    """Ask llama-server itself (not through the proxy)."""
    async with httpx.AsyncClient(timeout=60) as direct:
        body: dict[str, Any] | None = {} if method == "POST" else None
        resp = await direct.request(method, server.url + path, json=body)
        resp.raise_for_status()
        return resp.json()


async def slot_states(server: EmbeddedServer) -> list[dict[str, Any]]:
    states: list[dict[str, Any]] = await server_call(server, "GET", "/slots")
    return states


def make_settings(server: EmbeddedServer, tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(
        server_url=server.url,
        save_dir=server.save_dir,
        state_dir=tmp_path / "state",
        **overrides,
    )


@pytest.fixture(autouse=True)
def isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user config file or KVTUI_* variable leaks into the proxy's settings."""
    monkeypatch.setenv("KVTUI_CONFIG", str(tmp_path / "config.toml"))
    for name in list(os.environ):
        if name.startswith("KVTUI_") and name not in ("KVTUI_CONFIG", "KVTUI_LLAMA_SERVER"):
            monkeypatch.delenv(name)


@asynccontextmanager
async def running_proxy(settings: Settings) -> AsyncIterator[Harness]:
    """The proxy on a free loopback port in the test's event loop, with a client for it."""
    service = KvService(settings)
    proxy = ProxyServer(service, host="127.0.0.1", port=0)
    await proxy.start()
    client = httpx.AsyncClient(base_url=proxy.url, timeout=120)
    try:
        yield Harness(proxy, service, client)
    finally:
        await client.aclose()
        await proxy.stop()
        await service.aclose()


def _without_timings(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "timings"}


async def test_stream_passes_through_byte_for_byte(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    body = st_body(st_prompt("Seraphina", [(USER, "Hi! Where am I?")]), [f"\n{USER}:"])
    body.update(stream=True, n_predict=24, ignore_eos=True)
    async with running_proxy(make_settings(clean_server, tmp_path)) as h:
        service, client = h.service, h.client
        service.set_current_chat("solo")
        async with client.stream("POST", "/completion", json=body) as resp:
            assert resp.headers["content-type"] == "text/event-stream"
            via_proxy = b"".join([chunk async for chunk in resp.aiter_raw()])
    slot = sse_events(via_proxy)[-1]["id_slot"]
    await server_call(clean_server, "POST", f"/slots/{slot}?action=erase")
    direct_body = dict(body, id_slot=slot, cache_prompt=True)
    async with (
        httpx.AsyncClient(timeout=120) as direct,
        direct.stream("POST", f"{clean_server.url}/completion", json=direct_body) as resp,
    ):
        direct_bytes = b"".join([chunk async for chunk in resp.aiter_raw()])
    proxied_blocks = via_proxy.split(b"\n\n")
    direct_blocks = direct_bytes.split(b"\n\n")
    assert len(proxied_blocks) == len(direct_blocks) > 20
    # Every event is identical to the byte, except the final one's measured timings.
    assert proxied_blocks[:-2] == direct_blocks[:-2]
    last_proxied, last_direct = sse_events(via_proxy)[-1], sse_events(direct_bytes)[-1]
    assert _without_timings(last_proxied) == _without_timings(last_direct)
    assert last_proxied["timings"]["predicted_n"] == last_direct["timings"]["predicted_n"] == 24


async def test_cancelling_a_stream_frees_the_slot(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    n_predict = 800
    prompt = st_prompt("Seraphina", [(USER, "Tell me a long story.")])
    body = st_body(prompt, [], stream=True, n_predict=n_predict)
    # Token probabilities make every event big, so the tiny model takes a second or more.
    body.update(ignore_eos=True, n_probs=100)
    async with running_proxy(make_settings(clean_server, tmp_path)) as h:
        service, client = h.service, h.client
        service.set_current_chat("solo")
        async with client.stream("POST", "/completion", json=body) as resp:
            seen = 0
            async for _chunk in resp.aiter_raw():
                seen += 1
                if seen == 5:
                    break  # leaving the block closes the connection mid-stream
        slot = service.book.find("solo", "Seraphina")
        assert slot is not None
        for _ in range(100):
            state = (await slot_states(clean_server))[slot]
            if not state["is_processing"]:
                break
            await asyncio.sleep(0.05)
        assert not state["is_processing"], "the slot kept generating after the client left"
        # The cache holds what was generated before the cancel, far short of the full reply.
        assert state["n_prompt_tokens"] < n_predict
        # The proxy is still serving, and the slot takes the next request at once.
        result = await complete(client, st_body(prompt, []))
        assert result["id_slot"] == slot


async def test_malformed_json_is_a_clear_400(clean_server: EmbeddedServer, tmp_path: Path) -> None:
    async with running_proxy(make_settings(clean_server, tmp_path)) as h:
        client = h.client
        headers = {"content-type": "application/json"}
        resp = await client.post("/completion", content=b'{"prompt": "hi", ', headers=headers)
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert "not valid JSON" in error["message"] and "kvtui proxy" in error["message"]
        resp = await client.post("/v1/completions", json=["not", "an", "object"])
        assert resp.status_code == 400 and "JSON object" in resp.json()["error"]["message"]
        assert (await client.get("/health")).status_code == 200


async def test_unknown_routes_and_other_endpoints_are_forwarded(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with running_proxy(make_settings(clean_server, tmp_path)) as h:
        client = h.client
        resp = await client.get("/no/such/route?x=1")
        assert resp.status_code == 404  # llama-server's own answer
        assert resp.json()["error"]["type"] == "not_found_error"
        props = (await client.get("/props")).json()
        assert props["total_slots"] == clean_server.n_slots
        tokens = (await client.post("/tokenize", json={"content": "hello"})).json()["tokens"]
        assert tokens and all(isinstance(t, int) for t in tokens)
        models = await client.get("/v1/models")
        assert models.status_code == 200 and models.json()["data"]
        # A non-stream OpenAI-style generation is routed and answered as-is.
        resp = await client.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        )
        assert resp.status_code == 200 and resp.json()["choices"]


async def test_unreachable_server_is_a_502_and_the_proxy_keeps_running(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    settings = make_settings(clean_server, tmp_path).model_copy(update={"server_url": dead})
    async with running_proxy(settings) as h:
        proxy, service, client = h.proxy, h.service, h.client
        service.set_current_chat("solo")
        for _ in range(2):
            resp = await client.post("/completion", json=st_body("Hi\nSeraphina:", []))
            assert resp.status_code == 502
            error = resp.json()["error"]
            assert error["type"] == "proxy_error"
            assert error["message"].startswith(f"kvtui proxy: llama-server at {dead}")
            assert "unreachable" in error["message"]
            resp = await client.get("/slots")
            assert resp.status_code == 502
        assert proxy.running
        assert any("unreachable" in e.message for e in service.events.recent())


async def test_explicit_identity_is_stripped_and_routes(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with running_proxy(make_settings(clean_server, tmp_path)) as h:
        service, client = h.service, h.client
        body = st_body("Some prompt without a name tail.", [])
        body["kvtui"] = {"chat_id": "Chat №1", "name": "Мира"}
        result = await complete(client, body)
        assert result["id_slot"] == service.book.find("Chat №1", "Мира")
        # llama-server echoes the parameters it used: the kvtui key never reached it.
        assert "kvtui" not in json.dumps(result["generation_settings"])
        headers = {"X-KVTUI-Chat": "Chat%20%E2%84%962", "X-KVTUI-Character": "Kael"}
        resp = await client.post("/completion", json=st_body("Hi", []), headers=headers)
        assert resp.json()["id_slot"] == service.book.find("Chat №2", "Kael")
        assert service.book.find("Chat №2", "Kael") != service.book.find("Chat №1", "Мира")


async def test_port_in_use_is_a_clear_error(clean_server: EmbeddedServer, tmp_path: Path) -> None:
    taken = bind_socket("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        settings = make_settings(clean_server, tmp_path, proxy_listen=f"127.0.0.1:{port}")
        service = KvService(settings)
        try:
            with pytest.raises(ProxyStartError, match=f"Port {port} .* already in use"):
                await ProxyServer(service).start()
        finally:
            await service.aclose()
    finally:
        taken.close()


# -- the prompt recorder -------------------------------------------------------------------


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[PromptRecorder]:
    yield PromptRecorder(tmp_path / "prompts")


def test_recorder_keeps_the_last_prompt_privately(recorder: PromptRecorder) -> None:
    assert recorder.last("Forest Party", "Kael") is None
    recorder.record("Forest Party", "Kael", "first", {"prompt": "first", "n_predict": 8})
    path = recorder.record("Forest Party", "Kael", "second", {"prompt": "second", "stop": ["\n"]})
    recorder.record("Forest Party", "Мира", "other", {})
    assert recorder.last("Forest Party", "Kael") == "second"
    assert recorder.last("Forest Party", "Мира") == "other"
    assert recorder.last("Other chat", "Kael") is None
    request = recorder.last_request("Forest Party", "Kael")
    assert request is not None and request.body == {"stop": ["\n"]}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(recorder.directory.stat().st_mode) == 0o700
    # Atomic writes leave no temp files behind.
    assert sorted(p.suffix for p in recorder.directory.iterdir()) == [".json", ".json"]


def test_recorder_ignores_damaged_files(recorder: PromptRecorder) -> None:
    path = recorder.record("chat", "Kael", "hello", {})
    path.write_text("{not json", encoding="utf-8")
    assert recorder.last("chat", "Kael") is None
    recorder.record("chat", "Kael", "again", {})
    assert recorder.last("chat", "Kael") == "again"


# -- kvtui proxy, the headless command -------------------------------------------------------


async def start_cli_proxy(
    server: EmbeddedServer, tmp_path: Path, listen: str, *extra: str
) -> asyncio.subprocess.Process:
    env = dict(os.environ)
    env["KVTUI_CONFIG"] = str(tmp_path / "config.toml")
    env["KVTUI_STATE_DIR"] = str(tmp_path / "cli-state")
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "kvtui.cli",
        "proxy",
        "--listen",
        listen,
        "--server",
        server.url,
        "--save-dir",
        str(server.save_dir),
        *extra,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_kvtui_proxy_command_serves_until_ctrl_c(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    port = free_port()
    proc = await start_cli_proxy(clean_server, tmp_path, f"127.0.0.1:{port}")
    assert proc.stdout is not None and proc.stderr is not None
    try:
        banner = b""
        while b"Press Ctrl-C" not in banner:
            line = await asyncio.wait_for(proc.stdout.readline(), timeout=60)
            assert line, (banner + await proc.stderr.read()).decode()
            banner += line
        assert f"API URL = http://127.0.0.1:{port}".encode() in banner
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            prompt = st_prompt("Seraphina", [(USER, "Hello!")])
            result = await complete(client, st_body(prompt, [f"\n{USER}:"]))
            assert result["stop"] is True
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    log = out.decode()
    assert "[route] Seraphina (unknown) → slot" in log
    assert "Stopping" in log and "Traceback" not in err.decode()


async def test_kvtui_proxy_command_port_taken(clean_server: EmbeddedServer, tmp_path: Path) -> None:
    taken = bind_socket("127.0.0.1", 0)
    try:
        port = taken.getsockname()[1]
        proc = await start_cli_proxy(clean_server, tmp_path, f"127.0.0.1:{port}")
        out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        taken.close()
    assert proc.returncode == 1
    assert f"Port {port} on 127.0.0.1 is already in use" in err.decode()
    assert "Traceback" not in err.decode()


async def test_api_key_is_forwarded_or_replaced(tmp_path: Path) -> None:
    server = EmbeddedServer(n_slots=1, n_ctx=512, api_key="sekrit")
    await asyncio.to_thread(server.start)
    try:
        async with httpx.AsyncClient(timeout=60) as direct:
            assert (await direct.get(f"{server.url}/slots")).status_code == 401
        base = Settings(server_url=server.url, state_dir=tmp_path / "state")
        # Without a key in kvtui's settings, the client's own Authorization goes through.
        async with running_proxy(base) as h:
            assert (await h.client.get("/slots")).status_code == 401
            auth = {"Authorization": "Bearer sekrit"}
            assert (await h.client.get("/slots", headers=auth)).status_code == 200
        # With settings.api_key, clients must present it: anonymous ones are not upgraded.
        keyed = base.model_copy(update={"api_key": "sekrit"})
        async with running_proxy(keyed) as h:
            refused = await h.client.get("/slots")
            assert refused.status_code == 401 and "API key" in refused.json()["error"]["message"]
            wrong = {"Authorization": "Bearer nope"}
            assert (await h.client.get("/slots", headers=wrong)).status_code == 401
            assert (await h.client.get("/slots", headers=auth)).status_code == 200
            assert (
                await h.client.get("/slots", headers={"X-Api-Key": "sekrit"})
            ).status_code == 200
            assert (await h.client.get("/health")).status_code == 200
    finally:
        await asyncio.to_thread(server.stop)


async def test_client_slot_actions_are_checked_and_tell_the_book(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    """Out-of-range ids and missing files never reach llama-server; an erase frees the book."""
    from kvtui.slots import GenType

    assert clean_server.save_dir is not None
    async with running_proxy(make_settings(clean_server, tmp_path)) as h:
        await h.service.connect()
        decision = await h.service.route("chat", "Seraphina", GenType.NORMAL)
        await h.service.client.completion("Alex: hi\nSeraphina:", id_slot=decision.slot)
        resp = await h.client.post("/slots/99?action=save", json={"filename": "x.bin"})
        assert resp.status_code == 400 and "does not exist" in resp.json()["error"]["message"]
        assert not (clean_server.save_dir / "x.bin").exists()
        resp = await h.client.post(
            f"/slots/{decision.slot}?action=restore", json={"filename": "missing.bin"}
        )
        assert resp.status_code == 400 and "missing.bin" in resp.json()["error"]["message"]
        assert h.service.book.find("chat", "Seraphina") == decision.slot
        resp = await h.client.post(f"/slots/{decision.slot}?action=erase", json={})
        assert resp.status_code == 200
        assert h.service.book.find("chat", "Seraphina") is None
