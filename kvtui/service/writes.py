"""Disk writes behind the event loop: fsyncs in a worker thread, one at a time, newest first.

The slot book and the recorded prompts are written atomically and fsynced after every change;
on the loop that also relays the proxy's streams each fsync would stall every stream (and a
routed request would wait for its prompt to reach the disk before it is forwarded). So writes are
queued here by key: a newer write for the same key replaces one that has not started. After a
short delay (so the book's two changes per generation and its prompt become one batch) a worker
thread runs the batch in order, and ``flush()`` waits until all are done. A crash loses at most
the changes of that delay. Without a running loop (plain synchronous use) a write happens at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

Write = Callable[[], object]
"""A blocking write; it may raise ``OSError`` (reported), anything else is a bug."""


DELAY = 0.02
"""Seconds a write waits for others to join its batch."""


class WriteBehind:
    """Queued blocking writes, run off the event loop. ``on_error`` is called in the loop."""

    def __init__(self, on_error: Callable[[Hashable, OSError], None], delay: float = DELAY) -> None:
        self._on_error = on_error
        self._delay = delay
        self._pending: dict[Hashable, tuple[Write, Callable[[], None] | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self.failed: dict[Hashable, OSError] = {}
        """The last write of each key that failed, until a later one for that key succeeds
        (headless commands check the slot book's before they exit)."""

    def submit(self, key: Hashable, write: Write, done: Callable[[], None] | None = None) -> None:
        """Queue ``write`` (replacing a queued one for ``key``); ``done`` runs after success."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._run(key, write, done)
            return
        self._pending.pop(key, None)  # re-queued at the end: writes stay in submission order
        self._pending[key] = (write, done)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._drain(), name="kvtui-write-behind")

    def queued(self, key: Hashable) -> bool:
        return key in self._pending

    async def _drain(self) -> None:
        while self._pending:
            if self._delay:
                await asyncio.sleep(self._delay)
            batch = list(self._pending.items())
            self._pending.clear()
            results = await asyncio.to_thread(_run_batch, [write for _, (write, _) in batch])
            for (key, (_, done)), error in zip(batch, results, strict=True):
                self._finished(key, error, done)

    def _run(self, key: Hashable, write: Write, done: Callable[[], None] | None) -> None:
        try:
            write()
        except OSError as err:
            self._finished(key, err, done)
        else:
            self._finished(key, None, done)

    def _finished(
        self, key: Hashable, error: OSError | None, done: Callable[[], None] | None
    ) -> None:
        if error is not None:
            self.failed[key] = error
            self._on_error(key, error)
            return
        self.failed.pop(key, None)
        if done is not None:
            done()

    async def flush(self) -> None:
        """Wait until every queued write has run (or failed and been reported)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)


def _run_batch(writes: list[Write]) -> list[OSError | None]:
    """Run ``writes`` in order (in a worker thread); each one's error, or None."""
    results: list[OSError | None] = []
    for write in writes:
        try:
            write()
        except OSError as err:
            results.append(err)
        else:
            results.append(None)
    return results
