"""The Memory screen's plan line and preview panel: a memory's title, text and keywords, editable.

:class:`MemoryPreviewPanel` shows a :class:`kvtui.memory.preview.Preview` (a parsed memory, or a
failed reply's raw text to fix by hand), says what the user can do next, and hands the fields
back as typed for Accept. :func:`describe_plan` is the plan line above it.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Input, TextArea

from kvtui.memory.preview import Preview, PreviewState
from kvtui.memory.workflow import MemoryPlan


def describe_plan(plan: MemoryPlan) -> str:
    """Which messages, preset and earlier memories a memory job would use, and its book."""
    where = {
        "kvtui": "after kvtui's last memory",
        "stmb": "after MemoryBooks' last memory",
    }.get(plan.start_point.source, "from the first message")
    return (
        f"Messages {plan.scene.range_text} ({len(plan.scene.lines)} visible; the default "
        f"starts {where}), preset {plan.preset.name}, {len(plan.previous)} earlier memories "
        f"as context → {plan.book_name}."
    )


class MemoryPreviewPanel(Vertical):
    DEFAULT_CSS = """
    MemoryPreviewPanel { height: 1fr; border: round $primary 50%; padding: 0 1; }
    MemoryPreviewPanel.ready { border: round $success; }
    MemoryPreviewPanel.failed { border: round $error; }
    MemoryPreviewPanel #memory-content { height: 1fr; min-height: 4; }
    """

    def compose(self) -> ComposeResult:
        yield Input(placeholder="title", id="memory-mem-title")
        yield TextArea(id="memory-content", soft_wrap=True)
        yield Input(placeholder="keywords, comma-separated", id="memory-keywords")

    def show(self, preview: Preview | None) -> tuple[str, bool] | None:
        """Fill the fields from ``preview``; returns the status line to show (and whether it is
        an error), or None when there is nothing to show."""
        self.set_class(preview is not None and preview.state is PreviewState.READY, "ready")
        self.set_class(preview is not None and preview.state is PreviewState.FAILED, "failed")
        if preview is None or preview.state is PreviewState.CANCELLED:
            return None
        title = self.query_one("#memory-mem-title", Input)
        content = self.query_one("#memory-content", TextArea)
        keywords = self.query_one("#memory-keywords", Input)
        if preview.memory is not None:
            title.value = preview.memory.title
            content.text = preview.memory.content
            keywords.value = ", ".join(preview.memory.keywords)
            return (
                f"Attempt {preview.attempts}: edit the fields if you like, then Accept (ctrl+s), "
                "Retry (ctrl+t) or discard (esc).",
                False,
            )
        assert preview.error is not None
        title.value, keywords.value = "", ""
        content.text = preview.raw
        return (
            f"Not a memory: {preview.error}. Retry, or fix the reply's JSON in the text box and "
            "Accept.",
            True,
        )

    def clear(self) -> None:
        self.query_one("#memory-mem-title", Input).value = ""
        self.query_one("#memory-content", TextArea).text = ""
        self.query_one("#memory-keywords", Input).value = ""
        self.show(None)

    def fields(self) -> tuple[str, str, str]:
        """The title, text and keywords as typed."""
        return (
            self.query_one("#memory-mem-title", Input).value,
            self.query_one("#memory-content", TextArea).text,
            self.query_one("#memory-keywords", Input).value,
        )
