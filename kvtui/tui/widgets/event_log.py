"""The event log panel: saves, loads, evictions, rotations, warnings and errors, with times.

Messages come from the server and from file names, so they are written as plain ``Text``
(never parsed as markup). Warning and error colours come from the current theme.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import replace

from rich.table import Table
from rich.text import Text
from textual import events
from textual.widgets import RichLog

from kvtui.chatref import with_titles
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
    """A scrolling log of service events, newest at the bottom.

    RichLog renders a line once, at the width it has then; this panel keeps its events and
    renders them again when its width changes, so a resized terminal re-wraps the log, and it
    scrolls back to the newest line. ``titles`` turns chat ids into SillyTavern's names.
    """

    MAX_EVENTS = 1000

    def __init__(self, *, id: str | None = None) -> None:  # noqa: A002 - Textual's name
        # min_width: RichLog renders at least 78 cells wide by default, which a narrow
        # terminal would then clip.
        super().__init__(
            markup=False,
            highlight=False,
            wrap=True,
            max_lines=self.MAX_EVENTS,
            min_width=24,
            id=id,
        )
        self._events: deque[Event] = deque(maxlen=self.MAX_EVENTS)
        self._width = 0
        self.titles: Mapping[str, str] = {}
        """Chat id → SillyTavern title, applied to every message shown."""

    def _styles(self) -> dict[Level, str]:
        theme = self.app.current_theme
        return {
            Level.WARNING: f"bold {theme.warning}" if theme.warning else "bold",
            Level.ERROR: f"bold {theme.error}" if theme.error else "bold",
        }

    def _shown(self, event: Event) -> Event:
        if not self.titles:
            return event
        return replace(event, message=with_titles(event.message, self.titles))

    def add_event(self, event: Event) -> None:
        self._events.append(event)
        self.write(event_row(self._shown(event), self._styles()), expand=True)

    @property
    def kept_events(self) -> list[Event]:
        """The events shown, oldest first."""
        return list(self._events)

    def rerender(self) -> None:
        """Render every kept event again (after a resize, or when chat titles are learnt)."""
        self.clear()
        styles = self._styles()
        for event in self._events:
            self.write(event_row(self._shown(event), styles), expand=True, scroll_end=False)
        # After the next refresh the new lines have their height: only then is the end known.
        self.call_after_refresh(self.scroll_end, animate=False)

    def on_resize(self, event: events.Resize) -> None:
        if event.size.width != self._width:
            self._width = event.size.width
            if self._events:
                # After the refresh the content region has its new width to wrap to.
                self.call_after_refresh(self.rerender)
