"""The embedded server and the tiny model: the ground every integration test stands on."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from pathlib import Path

from kvtui.embedded.server import EmbeddedServer
from kvtui.embedded.tinymodel import write_tiny_model
from tests.conftest import _post


def test_tiny_model_is_deterministic(tmp_path: Path) -> None:
    a = write_tiny_model(tmp_path / "a.gguf").read_bytes()
    b = write_tiny_model(tmp_path / "b.gguf").read_bytes()
    assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest()
    assert 100_000 < len(a) < 2_000_000


def test_server_speaks_unicode_and_answers_ascii(clean_server: EmbeddedServer) -> None:
    tokens = _post(clean_server.url + "/tokenize", {"content": "привет мир 你好世界 hello"})
    assert isinstance(tokens["tokens"], list) and tokens["tokens"]
    result = _post(
        clean_server.url + "/completion",
        {"prompt": "Alex: Hi!\nSeraphina:", "n_predict": 40, "id_slot": 0},
    )
    content = result["content"]
    assert isinstance(content, str)
    assert all(32 <= ord(c) < 127 for c in content)


def test_server_has_explicit_slots(clean_server: EmbeddedServer) -> None:
    with urllib.request.urlopen(clean_server.url + "/props") as resp:
        props = json.loads(resp.read())
    assert props["total_slots"] == 4
    assert props["default_generation_settings"]["n_ctx"] == 1024


def test_server_without_save_path_refuses_slot_actions(tmp_path: Path) -> None:
    with EmbeddedServer(save_dir=None, n_slots=2, n_ctx=512) as server:
        req = urllib.request.Request(
            server.url + "/slots/0?action=save",
            data=b'{"filename": "x.bin"}',
            headers={"Content-Type": "application/json"},
        )
        try:
            urllib.request.urlopen(req)
        except urllib.error.HTTPError as err:
            assert err.code == 501
        else:
            raise AssertionError("slot save succeeded without --slot-save-path")
    assert not server.running
