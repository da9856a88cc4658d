"""The store's errors: one hierarchy, each a one-line message that says what to do.

Everything the save directory can go wrong with derives from :class:`StoreError`, so callers
catch one class (and a project-wide root error is a one-line change here).
"""

from __future__ import annotations

from kvtui.errors import KvtuiError


class StoreError(KvtuiError):
    """Any problem with the save directory or one of its files (``str(err)`` is for users)."""


class SaveDirUnreadable(StoreError):
    """The save directory exists but cannot be listed (permissions, I/O error)."""


class SaveWriteFailed(StoreError):
    """kvtui could not write a file of its own there (sidecar, rename): disk full, read-only."""


class SaveRefused(StoreError):
    """A save that kvtui will not make, e.g. one that would overwrite an existing save."""


class SaveIncomplete(StoreError):
    """A save the server answered but that failed verification: it was discarded."""


class NotRestorable(StoreError):
    """A save file that must not be sent to llama-server (it would wipe the target slot)."""
