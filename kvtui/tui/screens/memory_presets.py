"""The memory preset manager: create, edit, duplicate, delete, import/export, reset built-ins.

A modal over the Memory screen. The list shows every preset (built-ins marked); the fields edit
the selected one and Save writes it (a new name renames it; a name that is taken is refused).
Import adds the presets of a JSON file (taken names are renamed, nothing is overwritten); Export
writes them all to the given path. Esc closes and returns the selected preset's name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, OptionList, TextArea

from kvtui.memory.library import LibraryError, TemplateLibrary
from kvtui.memory.prompt import Preset


class PresetManager(ModalScreen[str | None]):
    """Manage memory presets; dismisses with the selected preset's name (or None)."""

    DEFAULT_CSS = """
    PresetManager { align: center middle; }
    PresetManager #presets { width: 90%; height: 90%; border: round $primary; padding: 0 1;
        background: $surface; }
    PresetManager #presets-body { height: 1fr; }
    PresetManager #presets-list { width: 30; }
    PresetManager #presets-fields { width: 1fr; padding-left: 1; }
    PresetManager #presets-prompt { height: 1fr; }
    PresetManager #presets-status { height: auto; color: $text-muted; }
    PresetManager #presets-status.error { color: $text-error; }
    """

    BINDINGS = [
        Binding("escape", "close", "Close", id="presets.close"),
        Binding("ctrl+s", "save", "Save", id="presets.save"),
    ]

    def __init__(self, library: TemplateLibrary[Preset], selected: str | None = None) -> None:
        super().__init__()
        self.library = library
        self.selected = selected
        self.status_text = ""

    def compose(self) -> ComposeResult:
        with Vertical(id="presets"):
            yield Label("Memory presets", classes="hint")
            with Horizontal(id="presets-body"):
                yield OptionList(id="presets-list")
                with Vertical(id="presets-fields"):
                    yield Input(placeholder="name", id="presets-name")
                    yield Input(placeholder="description", id="presets-description")
                    yield TextArea(id="presets-prompt", soft_wrap=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="presets-save")
                yield Button("New", id="presets-new")
                yield Button("Duplicate", id="presets-duplicate")
                yield Button("Delete", variant="error", id="presets-delete")
                yield Button("Reset built-ins", id="presets-reset")
            with Horizontal(classes="dialog-buttons"):
                yield Input(placeholder="JSON file for import/export", id="presets-path")
                yield Button("Import", id="presets-import")
                yield Button("Export", id="presets-export")
            yield Label("", id="presets-status", markup=False)

    async def on_mount(self) -> None:
        await self._refresh()

    async def _refresh(self, select: str | None = None) -> None:
        try:
            presets = await asyncio.to_thread(self.library.all)
        except LibraryError as err:
            self._status(str(err), error=True)
            return
        names = [p.name for p in presets]
        listing = self.query_one("#presets-list", OptionList)
        listing.clear_options()
        listing.add_options([f"{p.name}{'  (built-in)' if p.builtin else ''}" for p in presets])
        wanted = select or self.selected
        index = names.index(wanted) if wanted in names else (0 if names else None)
        if index is not None:
            listing.highlighted = index
            self._show(presets[index])

    def _show(self, preset: Preset) -> None:
        self.selected = preset.name
        self.query_one("#presets-name", Input).value = preset.name
        self.query_one("#presets-description", Input).value = preset.description
        self.query_one("#presets-prompt", TextArea).text = preset.prompt

    @on(OptionList.OptionHighlighted, "#presets-list")
    async def _highlighted(self, event: OptionList.OptionHighlighted) -> None:
        presets = await asyncio.to_thread(self.library.all)
        if 0 <= event.option_index < len(presets):
            self._show(presets[event.option_index])

    async def _do(self, action: str, work: Callable[[], object]) -> None:
        """Run a library call in a thread; report its error, if any, in the status line."""
        try:
            result = await asyncio.to_thread(work)
        except (LibraryError, OSError, ValueError) as err:
            self._status(f"{action}: {err}", error=True)
            return
        name = getattr(result, "name", None)
        await self._refresh(name if isinstance(name, str) else None)
        self._status(f"{action}: done.")

    async def action_save(self) -> None:
        name = self.query_one("#presets-name", Input).value.strip()
        description = self.query_one("#presets-description", Input).value
        prompt = self.query_one("#presets-prompt", TextArea).text.strip()
        if not prompt:
            self._status("A preset needs prompt text.", error=True)
            return
        existing = set(self.library.names())
        if self.selected in existing:
            old = self.selected

            def update() -> Preset:
                return self.library.update(old, name=name, description=description, prompt=prompt)

            await self._do("Save", update)
        else:
            preset = Preset(name=name, description=description, prompt=prompt)
            await self._do("Save", lambda: self.library.add(preset))

    @on(Button.Pressed, "#presets-save")
    async def _save_pressed(self) -> None:
        await self.action_save()

    @on(Button.Pressed, "#presets-new")
    def _new(self) -> None:
        self.selected = None
        self.query_one("#presets-name", Input).value = "New preset"
        self.query_one("#presets-description", Input).value = ""
        self.query_one("#presets-prompt", TextArea).text = ""
        self._status("Write the prompt, then Save.")

    @on(Button.Pressed, "#presets-duplicate")
    async def _duplicate(self) -> None:
        if self.selected:
            name = self.selected
            await self._do("Duplicate", lambda: self.library.duplicate(name))

    @on(Button.Pressed, "#presets-delete")
    async def _delete(self) -> None:
        if self.selected:
            name = self.selected
            self.selected = None
            await self._do("Delete", lambda: self.library.delete(name))

    @on(Button.Pressed, "#presets-reset")
    async def _reset(self) -> None:
        await self._do("Reset built-ins", self.library.reset_builtins)

    def _path(self) -> Path | None:
        text = self.query_one("#presets-path", Input).value.strip()
        if not text:
            self._status("Give a file path first.", error=True)
            return None
        return Path(text).expanduser()

    @on(Button.Pressed, "#presets-import")
    async def _import(self) -> None:
        path = self._path()
        if path is not None:
            await self._do(
                "Import", lambda: self.library.import_json(path.read_text(encoding="utf-8"))
            )

    @on(Button.Pressed, "#presets-export")
    async def _export(self) -> None:
        path = self._path()
        if path is not None:
            await self._do(
                "Export", lambda: path.write_text(self.library.export() + "\n", encoding="utf-8")
            )

    def action_close(self) -> None:
        self.dismiss(self.selected)

    def _status(self, text: str, *, error: bool = False) -> None:
        self.status_text = text
        label = self.query_one("#presets-status", Label)
        label.update(text)
        label.set_class(error, "error")
