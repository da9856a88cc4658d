"""The headless CLI, run as a user runs it: a real process against the real embedded server."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kvtui.embedded.server import EmbeddedServer, free_port
from tests.conftest import _post

PROMPT = "Alex: Hello there, where are we going today?\nSeraphina:"


def kvtui(
    tmp_path: Path, *args: str, server: EmbeddedServer | None = None, check: bool = False
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["KVTUI_CONFIG"] = str(tmp_path / "config.toml")
    env["KVTUI_STATE_DIR"] = str(tmp_path / "state")
    cmd = [sys.executable, "-m", "kvtui.cli", *args]
    if server is not None:
        cmd += ["--server", server.url]
        if server.save_dir is not None:
            cmd += ["--save-dir", str(server.save_dir)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def slot_tokens(server: EmbeddedServer, slot: int) -> int:
    with urllib.request.urlopen(f"{server.url}/slots") as resp:
        slots = json.loads(resp.read())
    return int(slots[slot].get("n_prompt_tokens", 0))


def test_save_ls_erase_load_round_trip(clean_server: EmbeddedServer, tmp_path: Path) -> None:
    assert clean_server.save_dir is not None
    _post(clean_server.url + "/completion", {"prompt": PROMPT, "n_predict": 1, "id_slot": 1})
    out = kvtui(
        tmp_path,
        "save",
        "1",
        "--chat",
        "Forest Party",
        "--character",
        "Серафина",
        "--tag",
        "важный момент",
        "--json",
        server=clean_server,
        check=True,
    )
    saved = json.loads(out.stdout)
    name = saved["filename"]
    assert name.startswith("Forest_Party_")
    assert name.endswith("_tag_важный_момент_character_Серафина.bin")
    path = clean_server.save_dir / name
    assert path.exists() and path.stat().st_size == saved["n_written"]
    meta = json.loads((clean_server.save_dir / (name + ".json")).read_text())
    assert meta["chat"] == "Forest Party" and meta["character"] == "Серафина"
    assert meta["tag"] == "важный момент" and meta["n_saved"] == saved["n_saved"] > 0

    listing = json.loads(kvtui(tmp_path, "ls", "--json", server=clean_server, check=True).stdout)
    [chat] = [c for c in listing if c["chat"] == "Forest Party"]
    [character] = chat["characters"]
    assert character["character"] == "Серафина"
    assert [s["file"] for s in character["saves"]] == [name]

    kvtui(tmp_path, "erase", "1", server=clean_server, check=True)
    assert slot_tokens(clean_server, 1) == 0
    kvtui(tmp_path, "load", name, "--slot", "2", server=clean_server, check=True)
    result = _post(
        clean_server.url + "/completion", {"prompt": PROMPT, "n_predict": 1, "id_slot": 2}
    )
    timings = result["timings"]
    assert isinstance(timings, dict)
    assert abs(timings["cache_n"] - saved["n_saved"]) <= 1


def test_bad_requests_fail_clearly_and_lose_nothing(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    assert clean_server.save_dir is not None
    _post(clean_server.url + "/completion", {"prompt": PROMPT, "n_predict": 1, "id_slot": 0})
    before = slot_tokens(clean_server, 0)
    assert before > 0

    out = kvtui(tmp_path, "save", "9", "--chat", "c", "--character", "n", server=clean_server)
    assert out.returncode == 1 and "slot 9" in out.stderr.lower()
    assert not any(clean_server.save_dir.iterdir())

    out = kvtui(tmp_path, "load", "missing.bin", "--slot", "0", server=clean_server)
    assert out.returncode == 1 and "missing.bin" in out.stderr
    assert slot_tokens(clean_server, 0) == before

    out = kvtui(tmp_path, "load", "../etc/passwd", "--slot", "0", server=clean_server)
    assert out.returncode == 1 and out.stderr.strip()
    assert slot_tokens(clean_server, 0) == before

    out = kvtui(tmp_path, "erase", "-1", server=clean_server)
    assert out.returncode != 0
    assert slot_tokens(clean_server, 0) == before

    out = kvtui(tmp_path, "save", "0", server=clean_server)
    assert out.returncode == 1 and "--character" in out.stderr


def test_unreachable_server_is_a_clear_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = kvtui(tmp_path, "slots", "--server", url)
    assert out.returncode == 1
    assert "unreachable" in out.stderr.lower() or "no llama-server" in out.stderr.lower()


def test_slots_json_shows_every_slot(clean_server: EmbeddedServer, tmp_path: Path) -> None:
    out = kvtui(tmp_path, "slots", "--json", server=clean_server, check=True)
    data = json.loads(out.stdout)
    assert [row["slot"] for row in data["slots"]] == [0, 1, 2, 3]


@pytest.fixture
def doctor_env(tmp_path: Path) -> Path:
    return tmp_path


def test_doctor_passes_on_a_good_server(clean_server: EmbeddedServer, tmp_path: Path) -> None:
    out = kvtui(tmp_path, "doctor", server=clean_server)
    assert out.returncode == 0, out.stdout
    assert "FAIL" not in out.stdout
    assert not [p for p in clean_server.save_dir.iterdir()]  # type: ignore[union-attr]


def test_doctor_no_server(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = kvtui(tmp_path, "doctor", "--json", "--server", url)
    assert out.returncode == 1
    [check] = json.loads(out.stdout)
    assert check["status"] == "fail" and url in check["detail"]
    assert "llama-server" in check["fix"]


def test_doctor_without_slot_save_path(tmp_path: Path) -> None:
    with EmbeddedServer(save_dir=None, n_slots=2, n_ctx=512) as server:
        out = kvtui(tmp_path, "doctor", "--json", "--save-dir", str(tmp_path), server=server)
    assert out.returncode == 1
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    assert checks["save directory"]["status"] == "fail"
    assert "--slot-save-path" in checks["save directory"]["fix"]


def test_doctor_wrong_save_dir(clean_server: EmbeddedServer, tmp_path: Path) -> None:
    wrong = tmp_path / "elsewhere"
    wrong.mkdir()
    out = kvtui(
        tmp_path, "doctor", "--json", "--server", clean_server.url, "--save-dir", str(wrong)
    )
    assert out.returncode == 1
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    assert checks["save directory"]["status"] == "fail"
    assert "not the server's --slot-save-path" in checks["save directory"]["detail"]


def test_doctor_unified_kv(tmp_path: Path) -> None:
    saves = tmp_path / "saves"
    with EmbeddedServer(save_dir=saves, n_slots=2, n_ctx=1024, kv_unified=True) as server:
        out = kvtui(tmp_path, "doctor", "--json", server=server)
    assert out.returncode == 1
    checks = {c["name"]: c for c in json.loads(out.stdout)}
    assert checks["unified KV"]["status"] == "fail"
    assert "--no-kv-unified" in checks["unified KV"]["fix"]


class _SpyRelay:
    """A TCP relay in front of a server that notices when a request containing ``marker``
    has passed through: the test then knows the request is at the server, not on its way."""

    def __init__(self, upstream_port: int, marker: bytes) -> None:
        import socket
        import threading

        self.marker = marker
        self.seen = threading.Event()
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the server is gone: so is this connection, as with no relay
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: Any, dst: Any, watch: bool) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if watch and self.marker in data:
                    self.seen.set()
        except OSError:
            pass
        finally:
            import socket

            for sock in (src, dst):  # shutdown wakes the other pump's blocked recv; close won't
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self.listener.close()


def test_busy_slot_waits_and_a_killed_server_is_reported(tmp_path: Path) -> None:
    """A save on a busy slot waits for it; if the server dies meanwhile the CLI says so.

    The server is killed only once the CLI's save request has reached it (seen by a relay), so
    the test means the same on a loaded machine as on an idle one.
    """
    import threading

    saves = tmp_path / "saves"
    with EmbeddedServer(save_dir=saves, n_slots=2, n_ctx=8192, threads=1) as server:

        def generate() -> None:
            try:
                _post(
                    server.url + "/completion",
                    {"prompt": PROMPT, "n_predict": 3000, "id_slot": 0, "ignore_eos": True},
                )
            except OSError:
                pass

        worker = threading.Thread(target=generate, daemon=True)
        worker.start()
        for _ in range(2000):  # wait until the slot is really busy
            with urllib.request.urlopen(f"{server.url}/slots") as resp:
                if json.loads(resp.read())[0]["is_processing"]:
                    break
        port = int(server.url.rsplit(":", 1)[1])
        relay = _SpyRelay(port, b"action=save")
        env = dict(os.environ)
        env["KVTUI_CONFIG"] = str(tmp_path / "config.toml")
        env["KVTUI_STATE_DIR"] = str(tmp_path / "state")
        cmd = [
            sys.executable, "-m", "kvtui.cli", "save", "0", "--chat", "c", "--character", "n",
            "--server", f"http://127.0.0.1:{relay.port}", "--save-dir", str(saves),
        ]  # fmt: skip
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            while not relay.seen.wait(0.1):
                if proc.poll() is not None:  # finished before its save reached a busy slot
                    break
            if proc.poll() is not None:
                _, err = proc.communicate()
                # Only a generation that ended first lets the save through: then it succeeded.
                assert proc.returncode == 0, err
                return
            busy = json.loads(urllib.request.urlopen(f"{server.url}/slots").read())[0]
            if not busy["is_processing"]:  # the generation ended first on a fast machine
                proc.communicate(timeout=120)
                assert proc.returncode == 0
                return
            server.kill()
            _, err = proc.communicate(timeout=120)
            worker.join(timeout=10)
        finally:
            relay.close()
    assert proc.returncode == 1
    assert "Traceback" not in err
    assert "llama-server" in err
    assert any(word in err.lower() for word in ("crashed", "unreachable", "broke off", "closed"))
    assert not list(saves.glob("*.bin"))


def test_slot_changes_refuse_while_another_kvtui_keeps_the_book(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    from kvtui.statelock import StateLock

    lock = StateLock(tmp_path / "state")
    assert lock.acquire("dashboard")
    try:
        out = kvtui(tmp_path, "erase", "0", server=clean_server)
        assert out.returncode == 1
        assert "dashboard" in out.stderr and "slot book" in out.stderr
        kvtui(tmp_path, "slots", server=clean_server, check=True)  # reading needs no lock
    finally:
        lock.release()
    kvtui(tmp_path, "erase", "0", server=clean_server, check=True)


def test_version_module_entry_and_config_problems(tmp_path: Path) -> None:
    from kvtui import __version__

    out = kvtui(tmp_path, "--version", check=True)
    assert out.stdout.strip() == f"kvtui {__version__}"
    env = dict(os.environ, KVTUI_CONFIG=str(tmp_path / "config.toml"))
    proc = subprocess.run(
        [sys.executable, "-m", "kvtui", "--version"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"kvtui {__version__}"
    # A --config that is not there is an error, not silently the defaults.
    out = kvtui(tmp_path, "ls", "--config", str(tmp_path / "typo.toml"))
    assert out.returncode == 2 and "no config file" in out.stderr
    # Unknown keys are reported (and the command still runs).
    (tmp_path / "config.toml").write_text("autosave_evry = 3\n")
    out = kvtui(tmp_path, "ls", "--save-dir", str(tmp_path))
    assert out.returncode == 0 and "autosave_evry (did you mean autosave_every?)" in out.stderr
    # A bad value says what to type, without library jargon.
    (tmp_path / "config.toml").write_text('autosave_every = "abc"\n')
    out = kvtui(tmp_path, "ls", "--save-dir", str(tmp_path))
    assert out.returncode == 2
    assert "autosave_every: type a whole number" in out.stderr and "http" not in out.stderr


def test_chat_titles_ids_and_file_names_resolve_and_erase_prints_json(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    from kvtui.sillytavern.sample import GROUP_CHAT_ID, copy_sample

    st_dir = copy_sample(tmp_path / "st")
    _post(clean_server.url + "/completion", {"prompt": PROMPT, "n_predict": 1, "id_slot": 1})
    st = ["--st-dir", str(st_dir)]
    out = kvtui(tmp_path, "save", "1", "--chat", "forest party", "--character", "Kael", "--json",
                *st, server=clean_server, check=True)  # fmt: skip
    saved = json.loads(out.stdout)
    assert saved["chat"] == GROUP_CHAT_ID  # the title became SillyTavern's chat id
    for typed in (GROUP_CHAT_ID, "Forest Party", f"{GROUP_CHAT_ID}.jsonl"):
        listing = json.loads(
            kvtui(
                tmp_path, "ls", "--json", "--chat", typed, *st, server=clean_server, check=True
            ).stdout  # fmt: skip
        )
        assert [c["chat"] for c in listing] == [GROUP_CHAT_ID]
    out = kvtui(tmp_path, "ls", "--chat", "Forrest Party", *st, server=clean_server)
    assert out.returncode == 2 and "Did you mean: Forest Party" in out.stderr
    out = kvtui(tmp_path, "save", "1", "--chat", "Nowhere", "--character", "Kael", *st,
                server=clean_server)  # fmt: skip
    assert out.returncode == 2 and "No chat 'Nowhere'" in out.stderr
    out = kvtui(tmp_path, "erase", "1", "--json", server=clean_server, check=True)
    erased = json.loads(out.stdout)
    assert erased["slot"] == 1 and erased["n_erased"] > 0
    assert slot_tokens(clean_server, 1) == 0


def test_headless_commands_beside_the_demo_use_its_state(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    from kvtui.demo import DemoPointer, pointer_path
    from kvtui.statelock import StateLock

    root = tmp_path / "demo"
    assert clean_server.save_dir is not None
    pointer = DemoPointer(
        os.getpid(), clean_server.url, "http://127.0.0.1:8081", root, root / "state",
        clean_server.save_dir, root / "st",
    )  # fmt: skip
    (root / "state").mkdir(parents=True)
    user_state = tmp_path / "state"  # KVTUI_STATE_DIR of kvtui()
    pointer_path(user_state).parent.mkdir(parents=True, exist_ok=True)
    pointer_path(user_state).write_text(pointer.to_json())
    lock = StateLock(root / "state")
    assert lock.acquire("demo")
    try:
        out = kvtui(tmp_path, "erase", "0", "--server", clean_server.url)
        assert out.returncode == 1 and "run this from the demo" in out.stderr
        assert not (user_state / "slots.json").exists()  # the user's own book untouched
        out = kvtui(tmp_path, "slots", "--server", clean_server.url, check=True)
        assert "using the running demo's state" in out.stderr
    finally:
        lock.release()
