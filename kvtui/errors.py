"""The root of every failure kvtui expects: ``KvtuiError``, with a message and a hint.

Every error a user can hit (llama-server said no, a save name is invalid, the slot book has no
room, the config file is wrong, the proxy's port is taken…) derives from ``KvtuiError``:
``err.message`` says what happened, ``err.hint`` what to do (often an exact flag), and
``str(err)`` is the one-line message shown to users: both together. Anything that is not a
``KvtuiError`` (or an ``OSError`` from the disk) is a bug in kvtui, and the dashboard shows its
traceback so it can be reported.
"""

from __future__ import annotations

from typing import ClassVar


class KvtuiError(Exception):
    """A failure kvtui expects and can explain; ``str(err)`` is message and hint together."""

    default_hint: ClassVar[str] = ""
    """The hint of every error of this class that is not given one of its own."""

    def __init__(self, message: str = "", hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = self.default_hint if hint is None else hint

    def __str__(self) -> str:
        if not self.hint:
            return self.message
        return f"{self.message.rstrip()} {self.hint}"
