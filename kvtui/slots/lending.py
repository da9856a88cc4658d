"""Lending a slot to a background job (a memory, a summary) without costing anyone its cache.

The one implementation of slot parking: under a gate that holds routing off (the service's lock),
an idle slot is chosen — the ``preferred`` one when it is idle (a job that extends that
character's prompt), else the one holding the fewest tokens, never one ``/slots`` shows
processing or ``busy`` reports in use. Its occupant is saved to a private file
(``private_name("job")``), the job runs, the file is restored (checked by ``n_restored`` against
``n_saved``) and deleted; a slot that was empty is erased again. That happens on success, failure
and cancel alike (the give-back finishes before a cancel propagates). Parking costs a save and a
restore, milliseconds, where letting the job overwrite the cache would cost the character its
whole prompt again.

The service's ``borrowed_slot`` (:mod:`kvtui.service.borrow`) lends through this with its lock
as the gate; the memory job runner (:mod:`kvtui.memory.jobs`) with the gate it was given.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvtui.errors import KvtuiError
from kvtui.llama.client import LlamaClient
from kvtui.llama.errors import LlamaError
from kvtui.llama.models import SlotState
from kvtui.store.names import private_name

Gate = contextlib.AbstractAsyncContextManager[Any]
"""What holds routing off while a slot is lent: the service's ``asyncio.Lock``."""

Report = Callable[[str, str], None]
"""Told each step: (stage, detail); stages ``waiting``, ``parking``, ``restoring``."""

POLL_S = 0.25
"""How often ``/slots`` is asked again while every slot is busy (when waiting is allowed)."""


class LendError(KvtuiError):
    """A slot that could not be lent, or not given back as it was; the message says what to do."""


@dataclass(frozen=True)
class Borrowed:
    """A lent slot: its occupant parked in ``filename`` (None: it was empty)."""

    slot: int
    filename: str | None
    n_saved: int


def choose_slot(
    slots: list[SlotState], preferred: int | None = None, busy: Callable[[int], bool] | None = None
) -> SlotState | None:
    """The slot to lend: ``preferred`` when idle, else the idle one with the fewest tokens."""
    idle = [s for s in slots if not s.is_processing and not (busy and busy(s.id))]
    chosen = next((s for s in idle if s.id == preferred), None)
    if chosen is not None:
        return chosen
    idle.sort(key=lambda s: (s.n_prompt_tokens or 0, s.id))
    return idle[0] if idle else None


@contextlib.asynccontextmanager
async def lent_slot(
    client: LlamaClient,
    *,
    gate: Gate | None = None,
    preferred: int | None = None,
    busy: Callable[[int], bool] | None = None,
    wait_timeout: float = 0.0,
    report: Report | None = None,
    on_not_returned: Callable[[LendError], None] | None = None,
) -> AsyncIterator[Borrowed]:
    """``async with lent_slot(client, gate=lock) as b: … id_slot=b.slot …``.

    The gate is held from the choice to the give-back. ``wait_timeout``: how long to wait for
    an idle slot (0: ask once). Raises ``LendError`` when no slot can be lent, and when the
    occupant does not come back whole — unless ``on_not_returned`` is given, which is told
    instead (the job's own outcome then stands).
    """
    say: Report = report or (lambda stage, detail: None)
    async with contextlib.AsyncExitStack() as held:
        park = await _park(client, held, gate, preferred, busy, wait_timeout, say)
        try:
            yield park
        finally:
            try:
                await shielded(_unpark(client, park, say))
            except LendError as err:
                if on_not_returned is None:
                    raise
                on_not_returned(err)


async def _park(
    client: LlamaClient,
    held: contextlib.AsyncExitStack,
    gate: Gate | None,
    preferred: int | None,
    busy: Callable[[int], bool] | None,
    wait_timeout: float,
    report: Report,
) -> Borrowed:
    """Choose an idle slot and park its occupant; the gate stays held (in ``held``)."""
    if client.save_dir is None:
        raise LendError(
            "Borrowing a slot needs kvtui's save directory (save_dir) to park its occupant; "
            "set save_dir, or reserve a slot for memory jobs (memory_slot)."
        )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_timeout
    while True:
        entered = contextlib.AsyncExitStack()
        if gate is not None:
            await entered.enter_async_context(gate)
        try:
            chosen = choose_slot(await client.slots(), preferred, busy)
            if chosen is not None:
                park = await _save_occupant(client, chosen, report)
                held.push_async_exit(entered)
                return park
        except BaseException:
            await entered.aclose()
            raise
        await entered.aclose()
        if loop.time() >= deadline:
            waited = f" for {wait_timeout:.0f} s" if wait_timeout > 0 else ""
            raise LendError(
                f"No slot was idle{waited}, so the job did not run; retry when the characters "
                "are quiet, or set memory_slot."
            )
        report("waiting", "Waiting for an idle slot")
        await asyncio.sleep(POLL_S)


async def _save_occupant(client: LlamaClient, slot: SlotState, report: Report) -> Borrowed:
    if not slot.n_prompt_tokens:
        return Borrowed(slot.id, None, 0)
    filename = private_name("job")
    report("parking", f"Parking slot {slot.id} ({slot.n_prompt_tokens} tokens)")
    result = await client.save(slot.id, filename)
    if result.n_saved == 0:
        _delete(client, filename)
        return Borrowed(slot.id, None, 0)
    return Borrowed(slot.id, filename, result.n_saved)


async def _unpark(client: LlamaClient, park: Borrowed, report: Report) -> None:
    report("restoring", f"Restoring slot {park.slot}")
    if park.filename is None:
        try:
            await client.erase(park.slot)
        except LlamaError as err:
            raise LendError(
                f"Slot {park.slot} was empty before the job and could not be erased after it "
                f"({err}); erase it with `kvtui erase {park.slot}`."
            ) from err
        return
    try:
        result = await client.restore(park.slot, park.filename)
    except LlamaError as err:
        raise LendError(
            f"Slot {park.slot}'s cache could not be restored after the job ({err}); it is "
            f"kept in {park.filename} in the save directory. Load it into slot {park.slot} "
            "with `kvtui load` before that character's next turn."
        ) from err
    if result.n_restored != park.n_saved:
        raise LendError(
            f"Slot {park.slot} got {result.n_restored} tokens back, not the {park.n_saved} "
            f"parked; {park.filename} is kept in the save directory."
        )
    _delete(client, park.filename)


def _delete(client: LlamaClient, filename: str) -> None:
    if client.save_dir is None:
        return
    with contextlib.suppress(OSError):
        Path(client.save_dir, filename).unlink()


async def shielded(coro: Coroutine[Any, Any, None]) -> None:
    """Await ``coro`` to the end even when the surrounding task is cancelled meanwhile."""
    task = asyncio.ensure_future(coro)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError
