"""``kvtui demo``: the whole product on a fresh machine, with nothing else installed.

Starts the embedded llama-server (the generated tiny model, explicit slots, a save directory),
copies the sample SillyTavern data directory, and opens the dashboard pointed at both, with the
keys that play a scripted SillyTavern conversation through the real proxy
(:mod:`kvtui.demo_script`). All of it lives in one temporary directory that is removed afterwards
(``--keep`` keeps it); the server is stopped on quit and on a crash alike. The user's own config
file is never written: the demo's settings form writes a config file inside the demo directory.

While it runs, the demo leaves a pointer, ``demo.json``, in the user's state directory: headless
commands aimed at the demo's server read it and use the demo's state directory (so its lock
refuses slot changes beside the dashboard) instead of writing the user's real slot book.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvtui.atomic import write_atomic
from kvtui.settings import Settings

SLOT_CTX = 2048
"""Tokens of context per demo slot."""
DEFAULT_SLOTS = 3
"""Fewer slots than the demo group has speakers, so the script shows an eviction."""
POINTER_NAME = "demo.json"


def demo_settings(settings: Settings, root: Path, server_url: str, st_dir: Path) -> Settings:
    """``settings`` pointed at the demo's server, save directory, sample data and state.

    Autosaves come every 2 messages (3 kept), so the short script shows saves and rotation.
    """
    return settings.model_copy(
        update={
            "server_url": server_url,
            "api_key": None,
            "save_dir": root / "saves",
            "st_dir": st_dir,
            "state_dir": root / "state",
            "autosave_every": 2,
            "max_autosaves": 3,
        }
    )


@dataclass(frozen=True)
class DemoPointer:
    """What ``demo.json`` says about a running demo."""

    pid: int
    server_url: str
    proxy_url: str
    root: Path
    state_dir: Path
    save_dir: Path
    st_dir: Path

    def to_json(self) -> str:
        return json.dumps(
            {
                "pid": self.pid,
                "server_url": self.server_url,
                "proxy_url": self.proxy_url,
                "root": str(self.root),
                "state_dir": str(self.state_dir),
                "save_dir": str(self.save_dir),
                "st_dir": str(self.st_dir),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> DemoPointer:
        data = json.loads(text)
        return cls(
            pid=int(data["pid"]),
            server_url=str(data["server_url"]),
            proxy_url=str(data["proxy_url"]),
            root=Path(data["root"]),
            state_dir=Path(data["state_dir"]),
            save_dir=Path(data["save_dir"]),
            st_dir=Path(data["st_dir"]),
        )


def pointer_path(user_state_dir: Path) -> Path:
    return user_state_dir / POINTER_NAME


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_demo(user_state_dir: Path) -> DemoPointer | None:
    """The demo running beside this user state directory; a stale pointer is removed."""
    path = pointer_path(user_state_dir)
    try:
        pointer = DemoPointer.from_json(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not _alive(pointer.pid) or not pointer.root.is_dir():
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return pointer


def _same_url(a: str, b: str) -> bool:
    def norm(url: str) -> str:
        return url.strip().rstrip("/").replace("://localhost", "://127.0.0.1")

    return norm(a) == norm(b)


def redirect_to_demo(settings: Settings) -> tuple[Settings, DemoPointer | None]:
    """``settings`` aimed at the running demo's state, when they point at the demo's server.

    Headless commands call this: pointed at the demo's llama-server or proxy, they use the
    demo's state, save and SillyTavern directories (the server must be the real one, not the
    proxy, or the proxy would route the command's own requests).
    """
    pointer = running_demo(settings.state_dir)
    if pointer is None:
        return settings, None
    if not (
        _same_url(settings.server_url, pointer.server_url)
        or _same_url(settings.server_url, pointer.proxy_url)
    ):
        return settings, None
    return (
        settings.model_copy(
            update={
                "server_url": pointer.server_url,
                "state_dir": pointer.state_dir,
                "save_dir": pointer.save_dir,
                "st_dir": pointer.st_dir,
            }
        ),
        pointer,
    )


def _free_listen(settings: Settings) -> tuple[str, bool]:
    """The proxy address for the demo: the configured one, or a free port on the same host
    when it is taken (a real kvtui may be running); True when it had to move."""
    from kvtui.embedded.server import free_port
    from kvtui.proxy.run import ProxyStartError, bind_socket

    host, port = settings.listen_host, settings.listen_port
    try:
        bind_socket(host, port).close()
    except ProxyStartError:
        try:
            port = free_port(host)
        except OSError:  # e.g. an IPv6 host: the dashboard reports the taken port itself
            return settings.proxy_listen, False
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{port}", True
    return settings.proxy_listen, False


def _exit_on_hangup() -> dict[int, Any]:
    """A closed terminal (SIGHUP) or SIGTERM ends the demo through its ``finally``, so the
    server is stopped and the temporary directory removed; returns the previous handlers."""

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    previous: dict[int, Any] = {}
    for signum in (signal.SIGHUP, signal.SIGTERM):
        try:
            previous[signum] = signal.signal(signum, leave)
        except (ValueError, OSError):  # not the main thread, or no such signal here
            pass
    return previous


def run_demo(settings: Settings, n_slots: int = DEFAULT_SLOTS, *, keep: bool = False) -> int:
    """Run the demo until the user quits; returns the dashboard's exit code.

    Args:
        settings: The user's settings (kept except for the server, directories and API key).
        n_slots: Slots of the embedded server, each with ``SLOT_CTX`` tokens.
        keep: Keep the demo directory (saves, state, sample data) instead of removing it.
    """
    from kvtui.embedded.server import EmbeddedServer, EmbeddedServerError
    from kvtui.sillytavern.sample import copy_sample
    from kvtui.tui.app import run_dashboard

    if n_slots < 1:
        print("kvtui demo: --slots must be at least 1", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="kvtui-demo-"))
    server = EmbeddedServer(
        save_dir=root / "saves",
        n_slots=n_slots,
        n_ctx=SLOT_CTX * n_slots,
        log_path=root / "llama.log",
    )
    pointer_file = pointer_path(settings.state_dir)
    wrote_pointer = False
    previous = _exit_on_hangup()
    try:
        print(f"kvtui demo: starting llama-server ({n_slots} slots × {SLOT_CTX} tokens)…")
        try:
            server.start()
        except EmbeddedServerError as err:
            print(f"kvtui demo: {err}", file=sys.stderr)
            return 1
        st_dir = copy_sample(root / "sillytavern")
        listen, moved = _free_listen(settings)
        demo = demo_settings(settings, root, server.url, st_dir).model_copy(
            update={"proxy_listen": listen}
        )
        proxy_url = f"http://{listen}"
        pointer = DemoPointer(
            os.getpid(), server.url, proxy_url, root, demo.state_dir, root / "saves", st_dir
        )
        try:
            write_atomic(pointer_file, pointer.to_json())
            wrote_pointer = True
        except OSError as err:
            print(f"kvtui demo: could not write {pointer_file}: {err}", file=sys.stderr)
        how = (
            f"Headless commands beside the demo: kvtui slots --server {server.url} "
            "(they use the demo's state, and slot changes are refused while it runs)."
        )
        notes = [how]
        if moved:
            notes.insert(
                0,
                f"{settings.proxy_listen} is taken (another kvtui?), so the demo's proxy "
                f"listens on {listen}; choose one with kvtui demo --listen HOST:PORT.",
            )
        print(f"kvtui demo: llama-server at {server.url}, proxy at {proxy_url}. {how}")
        return run_dashboard(
            demo, config_path=root / "config.toml", demo_slots=n_slots, notes=notes
        )
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        server.stop()
        if wrote_pointer:
            with contextlib.suppress(OSError):
                pointer_file.unlink()
        if keep:
            print(f"kvtui demo: files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
