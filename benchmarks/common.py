"""Shared pieces of the benchmarks: statistics, figures with targets, servers, the machine.

A benchmark prints its figures as it goes and returns them as ``Figure`` objects; the runner
collects them into the final results table. Comparisons alternate their sides inside one run
and report medians, because the machine is shared and noisy.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from kvtui.embedded.server import BINARY_ENV, EmbeddedServer


@dataclass(frozen=True)
class Figure:
    """One reported number, with its target when the issue sets one."""

    bench: str
    name: str
    value: float | None
    unit: str
    target: str | None = None
    ok: bool | None = None
    note: str = ""
    headline: bool = False
    """Shown in the summary table even without a target."""

    def shown(self) -> str:
        if self.value is None:
            return "n/a"
        return f"{fmt(self.value)} {self.unit}".strip()

    def verdict(self) -> str:
        if self.ok is None:
            return ""
        return "met" if self.ok else "**MISSED**"


@dataclass
class Context:
    """What every benchmark gets: the quick flag, a scratch directory, a figure sink."""

    quick: bool
    scratch: Path
    figures: list[Figure] = field(default_factory=list)
    server_build: str | None = None

    def reps(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def dir(self, name: str) -> Path:
        path = self.scratch / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        target = f"   target {figure.target}: {figure.verdict()}" if figure.target else ""
        note = f"   ({figure.note})" if figure.note else ""
        print(f"  {figure.name:<58} {figure.shown():>16}{target}{note}", flush=True)
        return figure


def fmt(value: float) -> str:
    """A number with about three significant digits, never in scientific notation."""
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], pct: float) -> float:
    """Linear-interpolated percentile (``pct`` in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ms(seconds: float) -> float:
    return seconds * 1000.0


def heading(title: str) -> None:
    print(f"\n== {title} ==", flush=True)


def note(text: str) -> None:
    print(f"  {text}", flush=True)


def isolate_environment(scratch: Path) -> None:
    """No user config file or ``KVTUI_*`` variable leaks into the benchmarks' settings."""
    for name in list(os.environ):
        if name.startswith("KVTUI_") and name != BINARY_ENV:
            del os.environ[name]
    os.environ["KVTUI_CONFIG"] = str(scratch / "config.toml")


def start_server(ctx: Context, name: str, **kwargs: Any) -> EmbeddedServer:
    """A real llama-server (embedded default, or ``$KVTUI_LLAMA_SERVER``) with its log in the
    scratch directory."""
    directory = ctx.dir(name)
    kwargs.setdefault("save_dir", directory / "saves")
    server = EmbeddedServer(log_path=directory / "server.log", **kwargs)
    server.start(timeout=180)
    if ctx.server_build is None:
        ctx.server_build = server_build(server)
    return server


def server_build(server: EmbeddedServer) -> str:
    """The server's kind and build, as /props reports it."""
    try:
        with urllib.request.urlopen(server.url + "/props", timeout=10) as resp:
            build = json.loads(resp.read()).get("build_info", "?")
    except OSError:
        build = "?"
    binary = server.binary or os.environ.get(BINARY_ENV)
    if binary:
        return f"llama-server binary {binary} (build_info {build})"
    try:
        version = metadata.version("xllamacpp")
    except metadata.PackageNotFoundError:
        version = "?"
    return f"xllamacpp {version} (llama.cpp server, build_info {build})"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description(ctx: Context) -> list[tuple[str, str]]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return [
        ("nproc", str(os.cpu_count())),
        ("CPU", cpu_model()),
        ("Python", platform.python_version()),
        ("OS", f"{platform.system()} {platform.release()}"),
        ("server", ctx.server_build or "not started"),
        ("model", "kvtui's generated tiny GGUF (2 layers, n_embd 64, F32)"),
        ("load average at the end", " / ".join(f"{x:.2f}" for x in load)),
    ]


COMMAND_ENV = "BENCH_KVTUI_COMMAND"


def kvtui_command() -> list[str]:
    """How to start the ``kvtui`` CLI: ``$BENCH_KVTUI_COMMAND`` (split like a shell would; to
    measure another build or a patched kvtui), else the one of this environment."""
    override = os.environ.get(COMMAND_ENV)
    if override:
        return shlex.split(override)
    script = Path(sys.executable).with_name("kvtui")
    if script.exists():
        return [str(script)]
    found = shutil.which("kvtui")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from kvtui.cli import main; sys.exit(main())"]


@contextlib.contextmanager
def scratch_directory(keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kvtui-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def wait_for_port(url: str, path: str = "/health", timeout: float = 60.0) -> None:
    """Wait until ``url + path`` answers anything over HTTP."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + path, timeout=2):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url}{path} did not answer within {timeout:.0f} s")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGINT (kvtui's Ctrl-C path), then SIGKILL; only the process we started."""
    if proc.poll() is None:
        import signal

        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
