"""The dashboard's header: which server, which model, and an honest connection state.

The state line always says what kvtui is doing right now — connected, the server loading its
model, or unreachable and when the next attempt comes — so the screen never looks frozen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import PurePath

from rich.text import Text
from textual.widgets import Static

from kvtui.service import ConnectionState, Snapshot
from kvtui.tui.format import DASH

_STATE_STYLE = {
    ConnectionState.CONNECTED: ("●", "connected", "status-connected"),
    ConnectionState.LOADING: ("◌", "loading model", "status-loading"),
    ConnectionState.UNREACHABLE: ("✕", "unreachable", "status-unreachable"),
    ConnectionState.UNKNOWN: ("…", "connecting", "status-unknown"),
}


def model_name(model: str | None) -> str:
    """The model's file name (servers report the full path they loaded)."""
    return PurePath(model).name if model else DASH


@dataclass(frozen=True)
class Retry:
    """When the next poll of an unreachable or loading server comes."""

    attempt: int
    delay: float


def server_lines(snapshot: Snapshot, attempt: int | None, retry_in: float | None) -> Text:
    """The header's text: state (with the retry countdown), server, model, slots, save dir."""
    symbol, word, _ = _STATE_STYLE[snapshot.state]
    state = Text.assemble((f"{symbol} {word}", "bold"))
    if attempt is not None and snapshot.state is not ConnectionState.CONNECTED:
        when = f"in {retry_in:.0f} s" if retry_in is not None and retry_in >= 0.5 else "now"
        state.append(f", retrying {when} (attempt {attempt})")
    slots = f"{snapshot.total_slots}"
    if snapshot.n_ctx:
        slots += f" × {snapshot.n_ctx} tokens"
    lines = Text.assemble(
        state,
        "   ",
        ("server ", "dim"),
        snapshot.server_url,
        "\n",
        ("model ", "dim"),
        model_name(snapshot.model),
        "   ",
        ("build ", "dim"),
        snapshot.build_info or DASH,
        "   ",
        ("slots ", "dim"),
        slots,
        "\n",
        ("saves ", "dim"),
        str(snapshot.save_dir) if snapshot.save_dir else "not set (use --save-dir)",
    )
    if snapshot.error and snapshot.state is not ConnectionState.CONNECTED:
        lines.append("\n")
        lines.append(snapshot.error)
    return lines


class ServerInfo(Static):
    """The server's identity and state; counts down to the next retry while it is down."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(id=id)
        self._snapshot: Snapshot | None = None
        self._attempt: int | None = None
        self._due: float | None = None

    def on_mount(self) -> None:
        self.set_interval(1.0, self._tick)

    def show(self, snapshot: Snapshot, retry: Retry | None = None) -> None:
        self._snapshot = snapshot
        self._attempt = retry.attempt if retry else None
        self._due = time.monotonic() + retry.delay if retry else None
        self.set_classes(_STATE_STYLE[snapshot.state][2])
        self._render_lines()

    def _tick(self) -> None:
        if self._due is not None:
            self._render_lines()

    def _render_lines(self) -> None:
        if self._snapshot is None:
            return
        retry_in = max(0.0, self._due - time.monotonic()) if self._due is not None else None
        self.update(server_lines(self._snapshot, self._attempt, retry_in))
