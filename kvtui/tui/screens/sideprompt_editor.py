"""Create or edit one side-prompt template: every field of the seed, checked before it is kept.

The form holds the name, the instruction text, the response-format guidance, the triggers (after
memory, every N messages, manual runs), the earlier memories it reads (0-7), the optional
server URL and model a template runs on instead of kvtui's memory job settings, and the
lorebook settings of its entry. Save (ctrl+s) validates the whole template (a bad field keeps
the form open with the reason) and dismisses with it; Esc keeps the library as it was.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Footer, Input, Label, Select, TextArea

from kvtui.sideprompts.templates import LoreMode, SidePrompt

_INPUTS = (
    ("name", "name"),
    ("format", "response format (plain text guidance; optional)"),
    ("interval", "every N visible messages (empty: off)"),
    ("previous", "earlier memories as context (0-7)"),
    ("server", "server URL (empty: kvtui's memory job settings)"),
    ("model", "model on that server (optional)"),
    ("position", "World Info position (0-3, 5-7)"),
    ("order", "order (0-9999)"),
)


def _form_values(t: SidePrompt) -> dict[str, str]:
    return {
        "name": t.name,
        "format": t.response_format,
        "interval": "" if t.triggers.interval is None else str(t.triggers.interval),
        "previous": str(t.previous_memories),
        "server": t.server_url or "",
        "model": t.model or "",
        "position": str(t.lore.position),
        "order": str(t.lore.order_value),
    }


class SidePromptEditor(ModalScreen[SidePrompt | None]):
    DEFAULT_CSS = """
    SidePromptEditor > Vertical { width: 90%; height: 90%; }
    SidePromptEditor #editor-prompt { height: 8; }
    SidePromptEditor #editor-form Input { margin-bottom: 0; }
    SidePromptEditor #editor-checks { height: auto; }
    SidePromptEditor #editor-status { height: auto; color: $text-error; }
    """

    BINDINGS = [
        Binding("ctrl+s", "save", "Save", id="sideprompt_editor.save"),
        Binding("escape", "close", "Cancel", id="sideprompt_editor.cancel"),
    ]

    def __init__(self, template: SidePrompt | None = None) -> None:
        super().__init__()
        self.template = template or SidePrompt(name="New side prompt", prompt="Describe…")
        self.status_text = ""

    def compose(self) -> ComposeResult:
        t = self.template
        values = _form_values(t)
        with Vertical(classes="dialog") as dialog:
            dialog.border_title = f"Side prompt: {t.name}"
            with VerticalScroll(id="editor-form"):
                yield Input(values["name"], placeholder=_INPUTS[0][1], id="editor-name")
                yield TextArea(t.prompt, id="editor-prompt", soft_wrap=True)
                for key, hint in _INPUTS[1:]:
                    yield Input(values[key], placeholder=hint, id=f"editor-{key}")
                with Horizontal(id="editor-checks"):
                    yield Checkbox("after memory", t.triggers.after_memory, id="editor-after")
                    yield Checkbox("manual runs", t.triggers.manual, id="editor-manual")
                    yield Checkbox("enabled", t.enabled, id="editor-enabled")
                    yield Select[str](
                        [(m.value, m.value) for m in LoreMode],
                        value=t.lore.mode.value,
                        allow_blank=False,
                        id="editor-mode",
                    )
            yield Label("", id="editor-status", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Save (ctrl+s)", variant="primary", id="editor-save")
                yield Button("Cancel (esc)", id="editor-cancel")
        yield Footer(show_command_palette=False)

    def _text(self, key: str) -> str:
        return self.query_one(f"#editor-{key}", Input).value.strip()

    def _check(self, key: str) -> bool:
        return self.query_one(f"#editor-{key}", Checkbox).value

    def values(self) -> dict[str, Any]:
        """The form as template data (numbers as typed; the model checks them)."""
        data = self.template.model_dump(mode="json")
        mode = self.query_one("#editor-mode", Select).value
        data.update(
            name=self._text("name"),
            prompt=self.query_one("#editor-prompt", TextArea).text.strip(),
            response_format=self._text("format"),
            enabled=self._check("enabled"),
            previous_memories=self._text("previous") or "0",
            server_url=self._text("server") or None,
            model=self._text("model") or None,
        )
        data["triggers"] = {
            "after_memory": self._check("after"),
            "manual": self._check("manual"),
            "interval": self._text("interval") or None,
        }
        data["lore"] = dict(
            data["lore"],
            mode=mode if isinstance(mode, str) else data["lore"]["mode"],
            position=self._text("position") or "0",
            order_value=self._text("order") or "0",
        )
        return data

    @on(Button.Pressed, "#editor-save")
    def action_save(self) -> None:
        try:
            template = SidePrompt.model_validate(self.values())
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "template"
            self._status(f"{where}: {first['msg']}")
            return
        if not template.name.strip():
            self._status("Give the side prompt a name.")
            return
        self.dismiss(template)

    @on(Button.Pressed, "#editor-cancel")
    def action_close(self) -> None:
        self.dismiss(None)

    def _status(self, text: str) -> None:
        self.status_text = text
        self.query_one("#editor-status", Label).update(text)
