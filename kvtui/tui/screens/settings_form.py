"""The settings form: every setting with a plain label and its description, checked as you type.

Each field is checked with the same rules as the config file (``validate_assignment`` on a copy,
so environment variables and the TOML file are not re-read), plus a check that the folders exist
(a save directory that is not there would only fail later). Messages are plain words. Values are
shown as one would type them (``20``, not ``20.0``). Esc with unsaved edits asks first. The screen
dismisses with the new ``Settings``; the caller writes the TOML file and applies it.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Footer, Input, Label, Static, Switch

from kvtui.settings import Settings, field_descriptions, field_label, human_error
from kvtui.tui.screens.confirm import ConfirmModal

PATH_FIELDS = frozenset({"save_dir", "st_dir", "state_dir"})


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


def _is_list(name: str) -> bool:
    return typing.get_origin(Settings.model_fields[name].annotation) is list


def value_text(value: object) -> str:
    """A value as a person types it: ``20`` for 20.0, ``1.5`` for 1.5, paths as written."""
    if value is None:
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value)


def field_text(settings: Settings, name: str) -> str:
    """A setting's current value as the form shows it."""
    value = getattr(settings, name)
    if name == "keymap":
        return keymap_to_text(value)
    if _is_list(name):
        return ", ".join(str(item) for item in value)
    return value_text(value)


def path_problem(name: str, path: Path) -> str | None:
    """Why a folder setting cannot be used as it stands (``None`` when it can)."""
    if name == "state_dir":
        if path.exists() and not path.is_dir():
            return f"{path} is a file, not a folder."
        return None  # created when kvtui first writes there
    if not path.exists():
        return f"There is no folder {path}."
    if not path.is_dir():
        return f"{path} is a file, not a folder."
    if name == "st_dir" and not any((path / sub).is_dir() for sub in ("characters", "chats")):
        return (
            "This does not look like a SillyTavern user folder (no characters or chats "
            "inside); it is usually SillyTavern/data/default-user."
        )
    return None


def validate_field(
    candidate: Settings, name: str, raw: str | bool, *, check_paths: bool = True
) -> str | None:
    """Set ``name`` on ``candidate`` from the form's raw value; return an error or ``None``.

    ``check_paths``: a folder setting must name a usable folder (the form checks what the user
    typed; a value that was already set is only warned about, see ``SettingsScreen``).
    """
    value: Any = raw
    if isinstance(raw, str):
        raw = raw.strip()
        if name == "keymap":
            try:
                value = keymap_from_text(raw)
            except ValueError as err:
                return str(err)
        elif _is_list(name):
            value = [item.strip() for item in raw.split(",") if item.strip()]
        elif not raw:
            if not _optional(name):
                return "A value is required."
            value = None
        else:
            value = raw
    try:
        setattr(candidate, name, value)
    except ValidationError as err:
        return _sentence(human_error(err).split(": ", 1)[-1])
    if check_paths and name in PATH_FIELDS and getattr(candidate, name) is not None:
        return path_problem(name, getattr(candidate, name))
    return None


def _sentence(text: str) -> str:
    text = text.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "." if text else text


def switch_text(on_: bool) -> Text:
    """The word beside a switch, so "off" reads as off in every theme."""
    return Text("on", style="bold") if on_ else Text("off", style="italic")


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
        self._initial: dict[str, str | bool] = {}

    def compose(self) -> ComposeResult:
        descriptions = field_descriptions()
        with Vertical(id="settings-dialog") as dialog:
            dialog.border_title = "Settings"
            with VerticalScroll(id="settings-fields"):
                for name in Settings.model_fields:
                    with Vertical(classes="setting", id=f"setting-{name}"):
                        yield Label(
                            Text.assemble((field_label(name), "bold"), (f"  {name}", "dim")),
                            classes="setting-name",
                        )
                        yield Static(descriptions.get(name, ""), classes="hint", markup=False)
                        if _is_bool(name):
                            on_ = bool(getattr(self._settings, name))
                            with Horizontal(classes="switch-row"):
                                yield Switch(on_, id=f"field-{name}")
                                yield Label(switch_text(on_), id=f"state-{name}")
                        else:
                            yield Input(
                                field_text(self._settings, name),
                                placeholder="several, separated by commas"
                                if _is_list(name)
                                else "",
                                id=f"field-{name}",
                                compact=True,
                            )
                        yield Label("", classes="field-error", id=f"error-{name}", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save and apply (ctrl+s)", variant="primary", id="save")
                yield Button("Cancel (esc)", id="cancel")
        yield Footer()

    def on_mount(self) -> None:
        self._initial = {name: self._raw(name) for name in Settings.model_fields}
        first = next(iter(Settings.model_fields))
        self.query_one(f"#field-{first}").focus()

    def _raw(self, name: str) -> str | bool:
        if _is_bool(name):
            return self.query_one(f"#field-{name}", Switch).value
        return self.query_one(f"#field-{name}", Input).value

    @property
    def edited(self) -> list[str]:
        """The settings whose field differs from what the form opened with."""
        return [n for n in Settings.model_fields if self._raw(n) != self._initial.get(n)]

    def validate_all(self) -> Settings | None:
        """Check every field, show each error beside its field; the new settings if all pass."""
        candidate = self._settings.model_copy(deep=True)
        self.errors = {}
        for name in Settings.model_fields:
            raw = self._raw(name)
            typed = raw != self._initial.get(name, raw)
            error = validate_field(candidate, name, raw, check_paths=typed)
            if error:
                self.errors[name] = error
            shown = error or ""
            value = getattr(candidate, name, None)
            if not error and not typed and name in PATH_FIELDS and isinstance(value, Path):
                # Set before (file, environment, flag): warn, but do not block other changes.
                problem = path_problem(name, value)
                shown = f"Warning: {problem}" if problem else ""
            self.query_one(f"#error-{name}", Label).update(shown)
            self.query_one(f"#setting-{name}").set_class(bool(error), "invalid")
        return None if self.errors else candidate

    @on(Input.Changed)
    def _changed(self) -> None:
        self.validate_all()

    @on(Switch.Changed)
    def _switched(self, event: Switch.Changed) -> None:
        name = (event.switch.id or "").removeprefix("field-")
        self.query_one(f"#state-{name}", Label).update(switch_text(event.value))
        self.validate_all()

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        new = self.validate_all()
        if new is None:
            first = next(iter(self.errors))
            self.query_one(f"#field-{first}").focus()
            n = len(self.errors)
            self.notify(
                f"{n} setting{'s' if n != 1 else ''} need{'s' if n == 1 else ''} fixing: "
                + ", ".join(field_label(name) for name in self.errors),
                severity="warning",
            )
            return
        self.dismiss(new)

    @on(Button.Pressed, "#cancel")
    def _cancel_pressed(self) -> None:
        self.action_cancel()

    def action_cancel(self) -> None:
        if self.edited:
            self._ask_discard()
        else:
            self.dismiss(None)

    @work(exclusive=True, group="settings-discard")
    async def _ask_discard(self) -> None:
        names = ", ".join(field_label(name) for name in self.edited)
        discard = await self.app.push_screen_wait(
            ConfirmModal("Discard changes?", f"You changed: {names}.", yes="Discard")
        )
        if discard:
            self.dismiss(None)
