"""``kvtui demo``: the whole product on a fresh machine, with nothing else installed.

Starts the embedded llama-server (the generated tiny model, explicit slots, a save directory),
copies the sample SillyTavern data directory, and opens the dashboard pointed at both. All of it
lives in one temporary directory that is removed afterwards; the server is stopped on quit and on
a crash alike. The user's own config file is never written: the demo's settings form writes a
config file inside the demo directory.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from kvtui.settings import Settings

SLOT_CTX = 2048
"""Tokens of context per demo slot."""


def demo_settings(settings: Settings, root: Path, server_url: str, st_dir: Path) -> Settings:
    """``settings`` pointed at the demo's server, save directory, sample data and state."""
    return settings.model_copy(
        update={
            "server_url": server_url,
            "api_key": None,
            "save_dir": root / "saves",
            "st_dir": st_dir,
            "state_dir": root / "state",
        }
    )


def run_demo(settings: Settings, n_slots: int = 4, *, keep: bool = False) -> int:
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
    try:
        print(f"kvtui demo: starting llama-server ({n_slots} slots × {SLOT_CTX} tokens)…")
        try:
            server.start()
        except EmbeddedServerError as err:
            print(f"kvtui demo: {err}", file=sys.stderr)
            return 1
        st_dir = copy_sample(root / "sillytavern")
        return run_dashboard(
            demo_settings(settings, root, server.url, st_dir), config_path=root / "config.toml"
        )
    finally:
        server.stop()
        if keep:
            print(f"kvtui demo: files kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
