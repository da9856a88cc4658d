"""Lending a slot to a background job the proxy forwards, without costing anyone its cache.

The parking itself is :func:`kvtui.slots.lending.lent_slot` (the one implementation, shared with
the memory job runner); the service's part is its policy: the service's lock is the gate, so no
character is routed, saved or loaded into the slot meanwhile; no waiting (a request is in
flight, so a busy server gets the job unpinned); and a slot whose occupant does not come back
whole is reported in the event log, since the job's reply has already gone to the client.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from kvtui.events import Kind
from kvtui.service.core import ServiceCore
from kvtui.slots.lending import LendError, lent_slot


@contextlib.asynccontextmanager
async def borrowed_slot(core: ServiceCore, preferred: int | None) -> AsyncIterator[int]:
    """Yield a slot for one job: ``preferred`` (e.g. the character's own, whose prompt the job
    extends), else the idle slot holding the fewest tokens. Holds ``core.lock`` throughout;
    raises ``LendError`` when no slot is idle (or there is no save directory to park in)."""

    def not_returned(err: LendError) -> None:
        core.events.error(Kind.ROUTE, f"Giving a slot back after a background job: {err}")

    async with lent_slot(
        core.client, gate=core.lock, preferred=preferred, on_not_returned=not_returned
    ) as lent:
        yield lent.slot
