"""Keeping a ``SaveStore``'s index current while other programs write the save directory."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvtui.store.errors import StoreError
from kvtui.store.names import BIN_SUFFIX

if TYPE_CHECKING:
    from kvtui.store.store import SaveStore

_SIDECAR = ".json"


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def _relevant(_change: object, path: str) -> bool:
    name = os.path.basename(path)
    return not name.startswith(".") and name.endswith((BIN_SUFFIX, BIN_SUFFIX + _SIDECAR))


async def watch_store(
    store: SaveStore,
    on_change: Callable[[], None],
    stop_event: asyncio.Event,
    *,
    debounce_ms: int = 300,
    resync_seconds: float = 30.0,
    force_polling: bool | None = None,
) -> None:
    """Keep ``store``'s index current until ``stop_event`` is set.

    File-system events (``watchfiles``, debounced by ``debounce_ms``) trigger a rescan;
    ``on_change`` is called whenever the index changed since the last call, including
    through the store's own writes and deletes. A full rescan also runs every
    ``resync_seconds`` in case an event was lost; a missing or replaced directory is
    waited for and watched again; an unreadable one keeps the last index until it is readable.
    """
    from watchfiles import awatch

    notified = store._version

    async def sync() -> None:
        nonlocal notified
        try:
            await asyncio.to_thread(store.rescan)
        except StoreError:
            return  # unreadable for now: keep the last index and try again later
        if store._version != notified:
            notified = store._version
            on_change()

    store._watching += 1
    try:
        while not stop_event.is_set():
            await sync()
            watched = store._dir_stat()
            if watched is None:
                await _wait(stop_event, 1.0)
                continue
            try:
                async for _changes in awatch(
                    store.directory,
                    watch_filter=_relevant,
                    debounce=debounce_ms,
                    stop_event=stop_event,
                    rust_timeout=max(1, int(resync_seconds * 1000)),
                    yield_on_timeout=True,
                    recursive=False,
                    force_polling=force_polling,
                    ignore_permission_denied=True,
                ):
                    await sync()
                    now = store._dir_stat()
                    if now is None or now.st_ino != watched.st_ino:
                        break  # deleted or replaced: watch the new one
            except OSError:
                await _wait(stop_event, 1.0)
    finally:
        store._watching -= 1
