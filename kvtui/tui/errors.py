"""Worker failures, handled in one place: a toast for known trouble, a modal for the rest.

A ``ServiceError`` or ``LlamaError`` already says what to do, so it becomes a toast. An ``OSError``
(a full disk, a missing directory) is also a toast. Anything else is a bug in kvtui: its
traceback is shown in an error modal the user can read and report.
"""

from __future__ import annotations

import traceback

from textual.app import App
from textual.worker import Worker

from kvtui.errors import KvtuiError
from kvtui.tui.screens.error import ErrorModal

EXPECTED_ERRORS: tuple[type[BaseException], ...] = (KvtuiError, OSError)
"""Failures kvtui expects (each says what to do): a toast. Anything else is a bug: its traceback."""
"""Errors whose message is the whole story (they say what to do)."""


def worker_title(worker: Worker[object]) -> str:
    return worker.description or worker.name or "A background job"


def report_worker_error(app: App[object], worker: Worker[object]) -> str:
    """Tell the user that ``worker`` failed; returns the one-line message that was shown."""
    error = worker.error
    if error is None:
        return ""
    title = f"{worker_title(worker)} failed"
    message = str(error) or type(error).__name__
    if isinstance(error, EXPECTED_ERRORS):
        app.notify(message, title=title, severity="error", timeout=10, markup=False)
    else:
        details = "".join(traceback.format_exception(error))
        app.push_screen(ErrorModal(title, message, details))
    return message
