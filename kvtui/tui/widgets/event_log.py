"""The event log panel: saves, loads, evictions, rotations, warnings and errors, with times.

Messages come from the server and from file names, so they are written as plain ``Text``
(never parsed as markup). Warning and error colours come from the current theme.
"""

from __future__ import annotations

from collections.abc import Mapping

from rich.table import Table
from rich.text import Text
from textual.widgets import RichLog

from kvtui.events import Event, Level


def event_line(event: Event, styles: Mapping[Level, str] | None = None) -> Text:
    """``HH:MM:SS  kind        message`` in local time, styled by level."""
    style = (styles or {}).get(event.level, "")
    return Text.assemble(
        (f"{event.time.astimezone():%H:%M:%S}  ", "dim"),
        (f"{event.kind.value:<11} ", "bold"),
        (event.message, style),
    )


def event_row(event: Event, styles: Mapping[Level, str] | None = None) -> Table:
    """The same line as :func:`event_line`, as a grid: long messages wrap in their column."""
    line = event_line(event, styles)
    time_and_kind, message = line[:22], line[22:]
    grid = Table.grid(expand=True)
    grid.add_column(width=22, no_wrap=True)
    grid.add_column(ratio=1)
    grid.add_row(time_and_kind, message)
    return grid


class EventLogPanel(RichLog):
    """A scrolling log of service events, newest at the bottom."""

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        super().__init__(markup=False, highlight=False, wrap=True, max_lines=1000, id=id)

    def add_event(self, event: Event) -> None:
        theme = self.app.current_theme
        styles = {
            Level.WARNING: f"bold {theme.warning}" if theme.warning else "bold",
            Level.ERROR: f"bold {theme.error}" if theme.error else "bold",
        }
        self.write(event_row(event, styles), expand=True)
