"""Shared fixtures: one real llama-server for the whole session, and clean slates per test.

The server is the embedded default (xllamacpp) on the generated tiny model, or the standalone
``llama-server`` binary named by ``KVTUI_LLAMA_SERVER``; the same tests run against both.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        result: dict[str, object] = json.loads(resp.read())
        return result


def reset_server(server: EmbeddedServer) -> None:
    """Erase every slot and empty the save directory."""
    for slot in range(server.n_slots):
        _post(f"{server.url}/slots/{slot}?action=erase", {})
    if server.save_dir is not None:
        for path in server.save_dir.iterdir():
            if path.is_file():
                path.unlink()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A real llama-server: 4 slots of 1024 tokens each, with a slot save path."""
    save_dir = tmp_path_factory.mktemp("slot-saves")
    server = EmbeddedServer(save_dir=save_dir, n_slots=4, n_ctx=4096)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def clean_server(llama_server: EmbeddedServer) -> EmbeddedServer:
    """The session server with every slot erased and an empty save directory."""
    if not llama_server.running:
        llama_server.start()
    reset_server(llama_server)
    return llama_server


@pytest.fixture
def save_dir(clean_server: EmbeddedServer) -> Path:
    assert clean_server.save_dir is not None
    return clean_server.save_dir


@pytest.fixture(scope="session")
def no_ram_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    """A server without the RAM prompt cache (``--cache-ram 0``): an evicted prompt is gone,
    so a lost cache shows in ``cache_n`` instead of being quietly brought back from RAM."""
    server = EmbeddedServer(
        save_dir=tmp_path_factory.mktemp("no-ram-saves"), n_slots=4, n_ctx=4096, cache_ram_mib=0
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def strict_server(no_ram_server: EmbeddedServer) -> EmbeddedServer:
    """:func:`no_ram_server` with every slot erased and its save directory empty."""
    reset_server(no_ram_server)
    return no_ram_server
