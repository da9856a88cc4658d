"""Lending a slot to a background job (a summary, a memory) without costing anyone its cache.

The slot's occupant is parked in a private file on the server first and restored afterwards
(an empty slot is erased again), all under the service's lock, so no character is routed into
the slot meanwhile. Parking costs a save and a restore — milliseconds — where letting the job
overwrite the cache would cost the character its whole prompt again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from kvtui.events import Kind
from kvtui.llama import LlamaError
from kvtui.service.core import ServiceCore
from kvtui.service.outcomes import ServiceError
from kvtui.store.names import private_name


@contextlib.asynccontextmanager
async def borrowed_slot(core: ServiceCore, preferred: int | None) -> AsyncIterator[int]:
    """Yield a slot for one job: ``preferred`` (e.g. the character's own, whose prompt the job
    extends), else the idle slot holding the fewest tokens. Holds ``core.lock`` throughout."""
    async with core.lock:
        states = await core.client.slots()
        idle = [s for s in states if not s.is_processing]
        chosen = next((s for s in idle if s.id == preferred), None)
        if chosen is None:
            idle.sort(key=lambda s: (s.n_prompt_tokens or 0, s.id))
            chosen = idle[0] if idle else None
        if chosen is None:
            raise ServiceError("No idle slot to lend to a background job.")
        slot = chosen.id
        parked: tuple[str, int] | None = None
        if chosen.n_prompt_tokens and core.client.save_dir is not None:
            name = private_name("job")
            result = await core.client.save(slot, name)
            if result.n_saved:
                parked = (name, result.n_saved)
            else:
                _delete(core, name)
        try:
            yield slot
        finally:
            await _give_back(core, slot, parked)


async def _give_back(core: ServiceCore, slot: int, parked: tuple[str, int] | None) -> None:
    try:
        if parked is None:
            await core.client.erase(slot)
            return
        name, n_saved = parked
        result = await core.client.restore(slot, name)
        if result.n_restored != n_saved:
            core.events.error(
                Kind.ROUTE,
                f"Slot {slot} got {result.n_restored} of its {n_saved} tokens back after a "
                f"background job; the cache is kept in {name}.",
            )
            return
        _delete(core, name)
    except LlamaError as err:
        core.events.error(Kind.ROUTE, f"Giving slot {slot} back after a background job: {err}")


def _delete(core: ServiceCore, name: str) -> None:
    save_dir = core.client.save_dir
    if save_dir is not None:
        with contextlib.suppress(OSError):
            (save_dir / name).unlink()
