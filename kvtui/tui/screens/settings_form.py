"""The settings form: every setting with its description, validated as you type.

Each field is checked with the same pydantic rules as the config file (``validate_assignment`` on
a copy, so environment variables and the TOML file are not re-read). The screen dismisses with
the new ``Settings``; the caller writes the TOML file and applies it without a restart.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import ValidationError
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, Static, Switch

from kvtui.settings import Settings, field_descriptions


def keymap_to_text(keymap: dict[str, str]) -> str:
    """``{"save_slot": "ctrl+s"}`` → ``save_slot=ctrl+s`` (entries separated by ``;``)."""
    return "; ".join(f"{binding_id}={keys}" for binding_id, keys in keymap.items())


def keymap_from_text(text: str) -> dict[str, str]:
    """The inverse of :func:`keymap_to_text`; raises ``ValueError`` on a malformed entry."""
    keymap: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in text.split(";"))):
        binding_id, sep, keys = entry.partition("=")
        if not sep or not binding_id.strip() or not keys.strip():
            raise ValueError(f"{entry!r} is not id=key (e.g. save_slot=ctrl+s)")
        keymap[binding_id.strip()] = keys.strip()
    return keymap


def _optional(name: str) -> bool:
    annotation = Settings.model_fields[name].annotation
    return isinstance(annotation, types.UnionType) and type(None) in typing.get_args(annotation)


def _is_bool(name: str) -> bool:
    return Settings.model_fields[name].annotation is bool


def field_text(settings: Settings, name: str) -> str:
    """A setting's current value as the form shows it."""
    value = getattr(settings, name)
    if name == "keymap":
        return keymap_to_text(value)
    return "" if value is None else str(value)


def validate_field(candidate: Settings, name: str, raw: str | bool) -> str | None:
    """Set ``name`` on ``candidate`` from the form's raw value; return an error or ``None``."""
    value: Any = raw
    if isinstance(raw, str):
        raw = raw.strip()
        if name == "keymap":
            try:
                value = keymap_from_text(raw)
            except ValueError as err:
                return str(err)
        elif not raw:
            if not _optional(name):
                return "A value is required."
            value = None
        else:
            value = raw
    try:
        setattr(candidate, name, value)
    except ValidationError as err:
        first = err.errors()[0]
        return str(first["msg"]).removeprefix("Value error, ")
    return None


class SettingsScreen(ModalScreen[Settings | None]):
    """Dismisses with validated new settings on save, ``None`` on Esc."""

    BINDINGS = [
        Binding("ctrl+s", "save", "Save and apply", id="settings.save", priority=True),
        Binding("escape", "cancel", "Cancel", id="settings.cancel"),
    ]

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self._settings = settings
        self.errors: dict[str, str] = {}

    def compose(self) -> ComposeResult:
        descriptions = field_descriptions()
        with Vertical(id="settings-dialog") as dialog:
            dialog.border_title = "Settings"
            with VerticalScroll(id="settings-fields"):
                for name in Settings.model_fields:
                    with Vertical(classes="setting", id=f"setting-{name}"):
                        yield Label(name, classes="setting-name")
                        yield Static(descriptions.get(name, ""), classes="hint", markup=False)
                        if _is_bool(name):
                            yield Switch(bool(getattr(self._settings, name)), id=f"field-{name}")
                        else:
                            yield Input(
                                field_text(self._settings, name), id=f"field-{name}", compact=True
                            )
                        yield Label("", classes="field-error", id=f"error-{name}", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save and apply (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")
        yield Footer()

    def _raw(self, name: str) -> str | bool:
        if _is_bool(name):
            return self.query_one(f"#field-{name}", Switch).value
        return self.query_one(f"#field-{name}", Input).value

    def validate_all(self) -> Settings | None:
        """Check every field, show each error beside its field; the new settings if all pass."""
        candidate = self._settings.model_copy(deep=True)
        self.errors = {}
        for name in Settings.model_fields:
            error = validate_field(candidate, name, self._raw(name))
            if error:
                self.errors[name] = error
            label = self.query_one(f"#error-{name}", Label)
            label.update(error or "")
            self.query_one(f"#setting-{name}").set_class(bool(error), "invalid")
        return None if self.errors else candidate

    @on(Input.Changed)
    @on(Switch.Changed)
    def _changed(self) -> None:
        self.validate_all()

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        new = self.validate_all()
        if new is None:
            first = next(iter(self.errors))
            self.query_one(f"#field-{first}").focus()
            self.notify(f"{len(self.errors)} setting(s) need fixing.", severity="warning")
            return
        self.dismiss(new)

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)
