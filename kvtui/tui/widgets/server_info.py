"""The dashboard's header: which server, which model, and an honest connection state.

The state line always says what kvtui is doing right now — connected, the server loading its
model, or unreachable and when the next attempt comes — so the screen never looks frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class Retry:
    """When the next poll of an unreachable or loading server comes."""

    attempt: int
    delay: float


class ServerInfo(Static):
    """Two lines about the server plus, when something is wrong, the reason and the retry."""

    def show(self, snapshot: Snapshot, retry: Retry | None = None) -> None:
        symbol, word, css_class = _STATE_STYLE[snapshot.state]
        self.set_classes(css_class)
        state = Text.assemble((f"{symbol} {word}", "bold"))
        if retry is not None and snapshot.state is not ConnectionState.CONNECTED:
            state.append(
                f", retrying in {retry.delay:.0f} s (attempt {retry.attempt})"
                if retry.delay >= 1
                else f", retrying (attempt {retry.attempt})"
            )
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
            snapshot.model or DASH,
            "   ",
            ("build ", "dim"),
            snapshot.build_info or DASH,
            "   ",
            ("slots ", "dim"),
            slots,
            "   ",
            ("saves ", "dim"),
            str(snapshot.save_dir) if snapshot.save_dir else "not set (use --save-dir)",
        )
        if snapshot.error and snapshot.state is not ConnectionState.CONNECTED:
            lines.append("\n")
            lines.append(snapshot.error)
        self.update(lines)
