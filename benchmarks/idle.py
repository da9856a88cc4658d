"""Benchmark 4: the idle dashboard's footprint.

A real ``kvtui`` process (the dashboard, the default command, with automatic mode on as it is by
default: the routing proxy and the chat-switch watcher in the same loop) runs in a 120x40
pseudo-terminal against a real llama-server with four slots, a save directory of a few hundred
saves and a SillyTavern data directory, at the default poll interval. After a warm-up, its CPU
time (user + system, all threads, from ``/proc/PID/stat``) over the wall time of the window
gives its share of one core; its resident memory comes from ``/proc/PID/status``. Only the kvtui
process is measured: llama-server is a separate process. The terminal output is read and
counted, never rendered.
"""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import struct
import termios
import threading
import time
from pathlib import Path

from benchmarks.common import (
    Context,
    Figure,
    heading,
    kvtui_command,
    note,
    start_server,
    wait_for_port,
)
from benchmarks.store import SaveFactory
from kvtui.embedded.server import free_port
from kvtui.settings import Settings
from kvtui.sillytavern import copy_sample

NAME = "idle"
COLUMNS, ROWS = 120, 40


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


class Terminal:
    """``kvtui`` on the slave side of a pty; the master side is drained by a thread."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: size the terminal, then become kvtui
            try:
                winsize = struct.pack("HHHH", ROWS, COLUMNS, 0, 0)
                fcntl.ioctl(0, termios.TIOCSWINSZ, winsize)
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.output = 0
        self.tail = b""
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.output += len(chunk)
            self.tail = (self.tail + chunk)[-4096:]

    def alive(self) -> bool:
        try:
            done, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return False
        return done == 0

    def stop(self) -> None:
        """``q`` (kvtui's quit key), then SIGINT, then SIGKILL — only this process."""
        for action in (None, signal.SIGINT, signal.SIGKILL):
            if not self.alive():
                break
            if action is None:
                os.write(self.fd, b"q")
            else:
                os.kill(self.pid, action)
            deadline = time.monotonic() + 5
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        os.close(self.fd)


async def run(ctx: Context) -> None:
    heading("4. Idle dashboard footprint (a real kvtui process in a pty)")
    _measure(ctx)  # blocking on purpose: this process must stay idle while kvtui is measured


def _measure(ctx: Context) -> None:
    server = start_server(ctx, NAME, n_slots=4, n_ctx=4 * 4096)
    assert server.save_dir is not None
    SaveFactory(server.save_dir, seed=9).grow(300)
    st_dir = copy_sample(ctx.dir(NAME) / "st-data")
    defaults = Settings.model_construct()
    window = ctx.reps(60, 20)
    warmup = ctx.reps(8, 5)
    note(
        f"poll interval {defaults.poll_interval} s (the default), {warmup} s warm-up, "
        f"{window} s measured, terminal {COLUMNS}x{ROWS}"
    )
    argv = kvtui_command() + [
        "--server", server.url, "--save-dir", str(server.save_dir), "--st-dir", str(st_dir),
    ]  # fmt: skip
    proxy_port = free_port()  # automatic mode (proxy + chat watcher) is on by default
    env = dict(
        os.environ,
        TERM="xterm-256color",
        COLORTERM="truecolor",
        KVTUI_STATE_DIR=str(ctx.dir(NAME) / "state"),
        KVTUI_PROXY_LISTEN=f"127.0.0.1:{proxy_port}",
    )
    term = Terminal(argv, env)
    try:
        time.sleep(warmup)
        if not term.alive():
            raise RuntimeError(f"kvtui exited during start-up: {term.tail[-1500:]!r}")
        wait_for_port(f"http://127.0.0.1:{proxy_port}", timeout=10)
        wall0, cpu0, out0 = time.monotonic(), _cpu_seconds(term.pid), term.output
        rss: list[int] = []
        while time.monotonic() - wall0 < window:
            time.sleep(1.0)
            rss.append(_status_kib(term.pid, "VmRSS"))
        wall, cpu = time.monotonic() - wall0, _cpu_seconds(term.pid) - cpu0
        output = term.output - out0
        peak = _status_kib(term.pid, "VmHWM")
        threads = _status_kib(term.pid, "Threads")
        children = _children(term.pid)
    finally:
        term.stop()
        server.stop()
    share = cpu / wall * 100
    ctx.add(Figure(NAME, "idle CPU, share of one core", share, "%", "<= 2%", share <= 2.0))
    rss_mb = max(rss) / 1024
    ctx.add(
        Figure(
            NAME, "resident memory (RSS), largest sample", rss_mb, "MB", "<= 150 MB", rss_mb <= 150
        )
    )
    ctx.add(Figure(NAME, "resident memory, peak (VmHWM, incl. start-up)", peak / 1024, "MB"))
    ctx.add(Figure(NAME, "terminal output while idle", output / wall / 1024, "KiB/s"))
    note(f"{threads} threads, child processes: {children or 'none'}; the proxy was listening")
