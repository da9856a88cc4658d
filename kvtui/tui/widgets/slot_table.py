"""The live slot table: fed frozen snapshot rows, updated in place by row key.

Rows are never cleared and rebuilt, so the cursor and the scroll position survive every poll
(the pattern of memray's live allocation table).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from rich.text import Text
from textual.widgets import DataTable

from kvtui.service import SlotRow
from kvtui.tui.format import SLOT_COLUMNS, slot_cells
from kvtui.warmth import SlotWarmth


class SlotTable(DataTable[str | Text]):
    """One row per server slot; the row key is the slot number."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        self.zebra_stripes = True
        for key, label in SLOT_COLUMNS:
            self.add_column(label, key=key)

    def show_rows(
        self,
        rows: Sequence[SlotRow],
        now: datetime | None = None,
        titles: Mapping[str, str] | None = None,
        warmth: Mapping[int, SlotWarmth] | None = None,
    ) -> None:
        """Bring the table in line with ``rows``: update, add and remove by slot number."""
        wanted: set[str] = set()
        for row in rows:
            key = str(row.slot)
            wanted.add(key)
            cells = slot_cells(row, now, titles, warmth)
            if key in self.rows:
                for column, value in cells.items():
                    if self.get_cell(key, column) != value:
                        self.update_cell(key, column, value, update_width=True)
            else:
                self.add_row(*(cells[column] for column, _ in SLOT_COLUMNS), key=key)
        for row_key in [k for k in self.rows if k.value not in wanted]:
            self.remove_row(row_key)

    @property
    def selected_slot(self) -> int | None:
        """The slot under the cursor, or ``None`` when the table is empty."""
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        return int(row_key.value) if row_key.value is not None else None
