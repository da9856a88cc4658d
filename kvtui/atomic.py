"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half.

Every file kvtui owns — the slot book, save sidecars, recorded prompts, the config file — is
written through :func:`write_atomic`: a private temporary file in the same directory (mode 0600
from the start), flushed and fsynced, then renamed over the target, and the rename made durable
where the platform allows.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if needed and make it ``0700``: kvtui's state
    directory holds the user's prompts and the names of their characters."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):  # not ours to change (or a platform without modes)
        os.chmod(path, 0o700)
    return path


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Replace ``path`` with ``data`` atomically; returns ``path``."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path
