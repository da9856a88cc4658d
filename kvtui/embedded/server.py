"""Run a real llama-server as a child process: the embedded default, or any binary by path.

The embedded default is PyPI's ``xllamacpp``, which runs upstream llama.cpp's own HTTP server
inside a Python process; kvtui starts that process itself (``python -m kvtui.embedded.xllama``)
so it can be stopped or killed like any server. A standalone ``llama-server`` binary (named by
``binary=`` or the ``KVTUI_LLAMA_SERVER`` environment variable) is started with the equivalent
command-line flags, so the same tests run against both.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from kvtui.embedded.tinymodel import write_tiny_model
from kvtui.errors import KvtuiError

BINARY_ENV = "KVTUI_LLAMA_SERVER"


class EmbeddedServerError(KvtuiError, RuntimeError):
    """The server could not be started (the message says why, with the end of its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def default_model_path() -> Path:
    """Where the generated tiny model lives (written on first use, shared by every run)."""
    from platformdirs import user_cache_path

    return user_cache_path("kvtui") / "kvtui-tiny.gguf"


def ensure_model(path: Path | None = None) -> Path:
    """Return a path to the tiny model, generating it when it is missing."""
    target = path or default_model_path()
    if not target.exists():
        # Write beside the target and rename, so a concurrent reader never sees half a file.
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        write_tiny_model(tmp)
        os.replace(tmp, target)
    return target


@dataclass
class EmbeddedServer:
    """A llama-server child process with explicit slots (``-np``), context and save path.

    ``n_ctx`` is the total context; each slot gets ``n_ctx // n_slots``. ``save_dir=None`` starts
    the server without ``--slot-save-path`` (slot actions then answer 501), which tests use.
    """

    save_dir: Path | None = None
    n_slots: int = 4
    n_ctx: int = 4096
    port: int = 0
    host: str = "127.0.0.1"
    model: Path | None = None
    binary: str | None = None
    kv_unified: bool = False
    api_key: str | None = None
    cache_ram_mib: int | None = None
    threads: int = 2
    log_path: Path | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log_file: object | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def n_ctx_per_slot(self) -> int:
        return self.n_ctx // self.n_slots

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _binary(self) -> str | None:
        return self.binary or os.environ.get(BINARY_ENV) or None

    def _command(self, model: Path) -> list[str]:
        binary = self._binary()
        if binary:
            resolved = shutil.which(binary) or binary
            cmd = [
                resolved,
                "-m", str(model),
                "-c", str(self.n_ctx),
                "-np", str(self.n_slots),
                "--host", self.host,
                "--port", str(self.port),
                "-t", str(self.threads),
                "-tb", str(self.threads),
                "--metrics",
                "--kv-unified" if self.kv_unified else "--no-kv-unified",
            ]  # fmt: skip
            if self.save_dir is not None:
                cmd += ["--slot-save-path", str(self.save_dir)]
            if self.api_key:
                cmd += ["--api-key", self.api_key]
            if self.cache_ram_mib is not None:
                cmd += ["--cache-ram", str(self.cache_ram_mib)]
            return cmd
        params = {
            "model": str(model),
            "n_ctx": self.n_ctx,
            "n_parallel": self.n_slots,
            "host": self.host,
            "port": self.port,
            "threads": self.threads,
            "slot_save_path": str(self.save_dir) if self.save_dir is not None else "",
            "kv_unified": self.kv_unified,
            "api_key": self.api_key or "",
            "cache_ram_mib": self.cache_ram_mib,  # None: the server's default
        }
        return [sys.executable, "-m", "kvtui.embedded.xllama", json.dumps(params)]

    def start(self, timeout: float = 120.0) -> EmbeddedServer:
        """Start the server and wait until ``/health`` answers 200."""
        if self.running:
            return self
        model = ensure_model(self.model)
        if self.save_dir is not None:
            self.save_dir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        if self.log_path is None:
            fd, name = tempfile.mkstemp(prefix="kvtui-llama-", suffix=".log")
            os.close(fd)
            self.log_path = Path(name)
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the server object
        self._log_file = log
        self._proc = subprocess.Popen(
            self._command(model),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self._wait_healthy(timeout)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise EmbeddedServerError(
                    f"llama-server exited with code {self._proc.returncode} while starting.\n"
                    + self.log_tail()
                )
            try:
                req = urllib.request.Request(self.url + "/health", headers=headers)
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.05)
        self.stop()
        raise EmbeddedServerError(
            f"llama-server did not become healthy within {timeout:.0f} s.\n" + self.log_tail()
        )

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL); safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=timeout)
        if self._log_file is not None:
            self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        self._proc = None

    def restart(self, timeout: float = 120.0) -> EmbeddedServer:
        """Stop and start again on the same port, as a user restarting llama-server would."""
        self.stop()
        return self.start(timeout)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
