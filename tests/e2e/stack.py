"""The processes of the e2e test: a real SillyTavern, llama-server, kvtui's proxy and a tap.

``Stack`` starts, in order: the embedded llama-server (2 slots, a slot save path), ``kvtui proxy``
as a subprocess in front of it (its own state directory, following the seeded SillyTavern user
directory), a recording ``Tap`` in front of the proxy, and SillyTavern 1.19 from the cache with a
config.yaml of its own and a data root in a temporary directory. SillyTavern's Text Completion
(llama.cpp) URL and Chat Completion (Custom) URL both point at the tap, so every request its
server makes is recorded before kvtui sees it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvtui.embedded.server import EmbeddedServer, free_port
from kvtui.sillytavern import sample
from tests.e2e.parity import Mark, prefill_by_phase, prompt_tokens_total
from tests.e2e.tap import Tap

ST_VERSION = "1.19.0"
ST_ENV = "KVTUI_E2E_SILLYTAVERN"
CHROMIUM_ENV = "KVTUI_E2E_CHROMIUM"

#: The second one-to-one chat of Seraphina (the sample has one): opened from the chat list.
OLD_SOLO_CHAT_ID = "Seraphina - 2026-05-01@09h12m00s000ms"
USER = "default-user"


def st_root() -> Path:
    """Where the cached SillyTavern lives (``.ci/sillytavern.sh`` puts it there)."""
    env = os.environ.get(ST_ENV)
    if env:
        return Path(env)
    return Path.home() / ".cache" / "kvtui-e2e" / f"sillytavern-{ST_VERSION}"


def chromium_path() -> str | None:
    env = os.environ.get(CHROMIUM_ENV)
    if env:
        return env
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def missing_requirements() -> str | None:
    """Why the e2e cannot run here (``None`` when it can)."""
    root = st_root()
    if not (root / "server.js").is_file() or not (root / "node_modules").is_dir():
        return f"SillyTavern {ST_VERSION} is not installed at {root} (run .ci/sillytavern.sh)"
    if shutil.which("node") is None:
        return "node is not installed (run .ci/sillytavern.sh)"
    if chromium_path() is None:
        return "chromium is not installed (run .ci/sillytavern.sh)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python playwright package is not installed (run .ci/sillytavern.sh)"
    return None


# -- the data root ---------------------------------------------------------------------------


def _old_solo_chat(user_dir: Path) -> None:
    """A second, older Seraphina chat with its own messages (the card's ``chat`` stays newer)."""
    lines = [
        {"chat_metadata": {"integrity": "0e6f9a51-4d3b-4c1e-9a63-1f2e3d4c5b6a", "tainted": True,
                           "note_prompt": "", "note_interval": 1, "note_depth": 4,
                           "note_position": 1, "timedWorldInfo": {"sticky": {}, "cooldown": {}}},
         "user_name": "unused", "character_name": "unused"},
        {"name": "Seraphina", "is_user": False, "is_system": False,
         "send_date": "2026-05-01T06:12:00.200Z",
         "mes": "*Rain taps on the leaves.* Come in from the storm, stranger.", "extra": {}},
        {"name": sample.USER_NAME, "is_user": True, "is_system": False,
         "send_date": "2026-05-01T06:12:30.000Z", "mes": "Thank you. Is there a fire?",
         "extra": {"isSmallSys": False},
         "force_avatar": "/thumbnail?type=persona&file=user-default.png"},
        {"name": "Seraphina", "is_user": False, "send_date": "2026-05-01T06:12:41.000Z",
         "mes": "*She nods to the hearth.* Sit and dry your cloak.", "title": "",
         "extra": {"api": "llamacpp", "model": "tiny"},
         "gen_started": "2026-05-01T06:12:35.000Z", "gen_finished": "2026-05-01T06:12:41.000Z",
         "swipe_id": 0, "swipes": ["*She nods to the hearth.* Sit and dry your cloak."],
         "swipe_info": [{"send_date": "2026-05-01T06:12:41.000Z", "extra": {}}]},
    ]  # fmt: skip
    path = user_dir / "chats" / "Seraphina" / f"{OLD_SOLO_CHAT_ID}.jsonl"
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), encoding="utf-8")
    # Older than the card's current chat, as a chat last used days before would be.
    current = user_dir / "chats" / "Seraphina" / f"{sample.SOLO_CHAT_ID}.jsonl"
    old = current.stat().st_mtime - 2 * 86400
    os.utime(path, (old, old))


#: The sampling seed SillyTavern sends (Text and Chat Completion): the same prompt gets the same
#: reply in every run, so a run through kvtui and one straight to llama-server see the same
#: prompts and their prefilled tokens compare one to one.
SEED = 1234


def st_settings(root: Path, api_url: str, *, max_tokens: int = 16) -> dict[str, Any]:
    """SillyTavern's own default settings.json with the APIs pointed at ``api_url``."""
    settings: dict[str, Any] = json.loads(
        (root / "default" / "content" / "settings.json").read_text(encoding="utf-8")
    )
    settings.update(
        firstRun=False,
        username=sample.USER_NAME,
        main_api="textgenerationwebui",
        amount_gen=max_tokens,
        max_context=2048,
        active_character=None,
        active_group=None,
    )
    tg = settings["textgenerationwebui_settings"]
    tg["type"] = "llamacpp"
    tg["streaming"] = True
    tg["seed"] = SEED
    tg.setdefault("server_urls", {})["llamacpp"] = api_url
    oai = settings["oai_settings"]
    oai.update(
        chat_completion_source="custom",
        custom_url=api_url + "/v1",
        custom_model="kvtui-tiny",
        openai_max_tokens=max_tokens,
        openai_max_context=2048,
        stream_openai=True,
        seed=SEED,
    )
    # A group made in the UI has a tag_map entry; without one, SillyTavern 1.19 never records
    # the group as active_group (getTagKeyForEntity finds no key for it).
    settings.setdefault("tag_map", {})[sample.GROUP_ID] = []
    power = settings["power_user"]
    power["auto_connect"] = False
    power.setdefault("personas", {})["user-default.png"] = sample.USER_NAME
    return settings


def seed_data_root(data_root: Path, root: Path, api_url: str) -> Path:
    """The sample user directory plus a second Seraphina chat and SillyTavern's settings."""
    user_dir = sample.build_sample(data_root / USER)
    _old_solo_chat(user_dir)
    group_path = user_dir / "groups" / f"{sample.GROUP_ID}.json"
    group = json.loads(group_path.read_text(encoding="utf-8"))
    group["activation_strategy"] = 1  # list: every unmuted member, in order (natural is random)
    group_path.write_text(json.dumps(group, indent=4), encoding="utf-8")
    # SillyTavern's content check would add its own "Seraphina" (default_Seraphina.png): a
    # second character of the same name. Marking it as already seeded keeps it out.
    (user_dir / "content.log").write_text("default_Seraphina.png\nSeraphina", encoding="utf-8")
    (user_dir / "settings.json").write_text(
        json.dumps(st_settings(root, api_url), indent=4, ensure_ascii=False), encoding="utf-8"
    )
    return user_dir


def st_config(data_root: Path, port: int) -> str:
    """config.yaml: local only, no browser, no updates, no downloads, content check on."""
    return f"""\
dataRoot: {json.dumps(str(data_root))}
listen: false
port: {port}
protocol:
  ipv4: true
  ipv6: false
browserLaunch:
  enabled: false
whitelistMode: true
whitelist:
  - ::1
  - 127.0.0.1
basicAuthMode: false
enableUserAccounts: false
skipContentCheck: false
enableDownloadableTokenizers: false
logging:
  enableAccessLog: false
  minLogLevel: 1
extensions:
  enabled: true
  autoUpdate: false
  models:
    autoDownload: false
backups:
  chat:
    enabled: false
"""


def _get(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except (urllib.error.URLError, OSError):
        return 0


def _wait_http(
    url: str, proc: subprocess.Popen[bytes], what: str, log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{what} exited with code {proc.returncode}:\n{tail}")
        if _get(url) == 200:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Stack:
    """llama-server → kvtui proxy → tap → SillyTavern, all under ``workdir``."""

    workdir: Path
    n_slots: int = 2
    n_ctx: int = 8192
    with_proxy: bool = True
    install_extension: bool = False
    llama: EmbeddedServer | None = None
    tap: Tap | None = None
    proxy_proc: subprocess.Popen[bytes] | None = None
    st_proc: subprocess.Popen[bytes] | None = None
    proxy_port: int = 0
    st_port: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)
    marks: list[Mark] = field(default_factory=list)
    server_runs: int = 0
    seed: Callable[[Path], None] | None = None
    """Called with the seeded user directory before SillyTavern and kvtui start (more data)."""
    tap_server: bool = False
    """Also record what kvtui sends llama-server: a second tap between them (``server_tap``)."""
    server_tap: Tap | None = None

    @property
    def data_root(self) -> Path:
        return self.workdir / "st-data"

    @property
    def user_dir(self) -> Path:
        return self.data_root / USER

    @property
    def state_dir(self) -> Path:
        return self.workdir / "kvtui-state"

    @property
    def save_dir(self) -> Path:
        return self.workdir / "slot-saves"

    @property
    def turns_path(self) -> Path:
        return self.state_dir / "turns.jsonl"

    @property
    def st_url(self) -> str:
        return f"http://127.0.0.1:{self.st_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def start(self) -> Stack:
        """Start everything (SillyTavern boots while llama-server and the proxy start)."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        root = st_root()
        self.tap = Tap(upstream="")
        self.tap.start()
        user_dir = seed_data_root(self.data_root, root, self.tap.url)
        if self.install_extension:
            from kvtui.sillytavern.install import install_extension

            install_extension(user_dir)
        if self.seed is not None:
            self.seed(user_dir)
        self.st_port = free_port()
        config = self.workdir / "st-config.yaml"
        config.write_text(st_config(self.data_root, self.st_port), encoding="utf-8")
        st_log = self.workdir / "sillytavern.log"
        self.st_proc = subprocess.Popen(
            ["node", "server.js", "--configPath", str(config)],
            cwd=root, stdout=st_log.open("ab"), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env={**os.environ, "NODE_ENV": "production"},
        )  # fmt: skip
        self.llama = EmbeddedServer(
            save_dir=self.save_dir,
            n_slots=self.n_slots,
            n_ctx=self.n_ctx,
            log_path=self.workdir / "llama.log",
        ).start()
        upstream = self.llama.url
        if self.tap_server and self.with_proxy:
            self.server_tap = Tap(upstream=upstream).start()
            upstream = self.server_tap.url
        if self.with_proxy:
            self.proxy_port = free_port()
            env = {**os.environ, **self.extra_env}
            env["KVTUI_CONFIG"] = str(self.workdir / "kvtui-config.toml")  # absent: defaults
            env["KVTUI_STATE_DIR"] = str(self.state_dir)
            log = self.workdir / "proxy.log"
            self.proxy_proc = subprocess.Popen(
                [sys.executable, "-m", "kvtui.cli", "proxy",
                 "--server", upstream, "--save-dir", str(self.save_dir),
                 "--st-dir", str(user_dir), "--listen", f"127.0.0.1:{self.proxy_port}"],
                stdout=log.open("ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=Path(__file__).resolve().parents[2],
            )  # fmt: skip
            _wait_http(self.proxy_url + "/health", self.proxy_proc, "kvtui proxy", log, 60)
            self.tap.upstream = self.proxy_url
        else:
            self.tap.upstream = upstream
        _wait_http(self.st_url + "/", self.st_proc, "SillyTavern", st_log, 180)

    def stop_clients(self) -> None:
        """Stop SillyTavern and kvtui, leaving llama-server up (safe twice)."""
        _stop(self.st_proc)
        self.st_proc = None
        _stop(self.proxy_proc)
        self.proxy_proc = None

    def stop(self) -> None:
        """Stop what was started (safe after a failed start, and twice)."""
        self.stop_clients()
        if self.tap is not None:
            self.tap.stop()
        if self.server_tap is not None:
            self.server_tap.stop()
        if self.llama is not None:
            self.llama.stop()

    def mark(self, phase: str) -> None:
        """A phase of the session begins: note llama-server's prompt-token counter."""
        assert self.llama is not None
        self.marks.append(Mark(phase, self.server_runs, prompt_tokens_total(self.llama.url)))

    def prefill_by_phase(self) -> dict[str, int]:
        """What llama-server prefilled per phase (``mark``), whoever sent it (kvtui too)."""
        assert self.llama is not None
        end = Mark("end", self.server_runs, prompt_tokens_total(self.llama.url))
        return prefill_by_phase(self.marks, end)

    def restart_llama(self) -> None:
        """Stop llama-server and start it again on the same port (its RAM cache is gone; the
        slot saves on disk stay), as a user restarting it mid-session would."""
        assert self.llama is not None
        self.llama.restart()
        self.server_runs += 1

    def turns(self) -> list[dict[str, Any]]:
        """kvtui's per-turn decision log (contracts.md), oldest first; [] when absent."""
        try:
            text = self.turns_path.read_text(encoding="utf-8")
        except OSError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
