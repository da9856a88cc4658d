"""Watch a SillyTavern user directory and report when the active chat changes.

SillyTavern writes every chat atomically: a temp file next to the chat, then a rename onto the
final name. The watcher therefore listens to create, modify, move and delete events in ``chats/``,
``group chats/`` and ``groups/`` alike, drops events for temp names and for ``backups/`` (not
watched at all), and after each debounced batch asks which chat file is now the newest (a stat
scan, no parsing). Folders that do not exist yet are picked up within ``recheck_s`` seconds of
appearing (or being recreated). Errors in the callback are logged and the watch goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from watchfiles import Change, awatch

from kvtui.sillytavern.layout import CHATS_DIR, GROUP_CHATS_DIR, GROUPS_DIR, is_chat_file_name
from kvtui.sillytavern.models import ChatRef

log = logging.getLogger(__name__)

OnActiveChange = Callable[[ChatRef], Awaitable[None] | None]


class ActiveChatSource(Protocol):
    """What the watcher needs of a data directory (``SillyTavernData`` is one)."""

    @property
    def user_dir(self) -> Path: ...

    def active_chat(self) -> ChatRef | None: ...


_WATCHED = (CHATS_DIR, GROUP_CHATS_DIR, GROUPS_DIR)


def chat_event_filter(user_dir: Path) -> Callable[[Change, str], bool]:
    """A watchfiles filter passing only events that can change which chat is active."""

    def accept(_change: Change, raw: str) -> bool:
        try:
            parts = Path(raw).relative_to(user_dir).parts
        except ValueError:
            return False
        if not parts or parts[0] not in _WATCHED:
            return False
        if len(parts) == 1:
            return True  # the folder itself appeared or went away
        if parts[0] == CHATS_DIR:
            # chats/<character folder> (created, renamed, deleted) or chats/<folder>/<chat>.jsonl
            return len(parts) == 2 or (len(parts) == 3 and is_chat_file_name(parts[2]))
        if parts[0] == GROUP_CHATS_DIR:
            return len(parts) == 2 and is_chat_file_name(parts[1])
        return len(parts) == 2 and parts[1].endswith(".json") and not parts[1].startswith(".")

    return accept


def _key(ref: ChatRef | None, every_write: bool) -> object:
    if ref is None:
        return None
    return (ref.path, ref.mtime) if every_write else ref.path


async def _notify(on_change: OnActiveChange, ref: ChatRef) -> None:
    try:
        result = on_change(ref)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("Active-chat callback failed for %s", ref.chat_id)


async def _wait(stop_event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop_event.wait(), timeout=seconds)


async def watch_active(
    data: ActiveChatSource,
    on_change: OnActiveChange,
    stop_event: asyncio.Event,
    *,
    every_write: bool = False,
    debounce_ms: int = 100,
    force_polling: bool | None = None,
    recheck_s: float = 2.0,
) -> None:
    """Call ``on_change(ref)`` each time the active chat changes, until ``stop_event`` is set.

    The chat active when the watch starts is the baseline and is not reported. ``on_change``
    may be a plain function or a coroutine function. With ``every_write`` a rewrite of the
    active chat file is reported too.
    """
    user_dir = data.user_dir
    last = _key(await asyncio.to_thread(data.active_chat), every_write)

    async def check() -> None:
        nonlocal last
        current = await asyncio.to_thread(data.active_chat)
        key = _key(current, every_write)
        if key != last and current is not None:
            await _notify(on_change, current)
        last = key

    accept = chat_event_filter(user_dir)
    restarted = False
    while not stop_event.is_set():
        present = [user_dir / name for name in _WATCHED if (user_dir / name).is_dir()]
        if restarted:
            await check()  # catch up on what happened while no watch covered it
        restarted = True
        if not present:
            await _wait(stop_event, recheck_s)
            continue
        try:
            async for changes in awatch(
                *present,
                watch_filter=accept,
                debounce=debounce_ms,
                step=50,
                stop_event=stop_event,
                rust_timeout=int(recheck_s * 1000),
                yield_on_timeout=True,
                force_polling=force_polling,
            ):
                if changes:
                    await check()
                if [user_dir / n for n in _WATCHED if (user_dir / n).is_dir()] != present:
                    break  # a watched folder appeared or went away: watch the new set
            else:
                await _wait(stop_event, 0.2)  # stopped, or the watch ended by itself
        except (OSError, RuntimeError) as err:
            # A watched folder was removed or became unreadable; keep trying until stopped.
            log.warning("Watching %s failed: %s", user_dir, err)
            await _wait(stop_event, recheck_s)
