"""From the router's :class:`~kvtui.outcomes.RouteDecision` to a :class:`TurnDecision`.

The proxy calls :func:`begin_routed` right after ``KvService.route`` returns (or fails), and
``ledger.finish(ticket, timings, disk_write_bytes=…, disk_write_tokens=…)`` when the reply ends
(the autosave's ``SaveOutcome`` gives the bytes and tokens written).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from kvtui.service.outcomes import RouteDecision
from kvtui.warmth.ledger import TurnTicket, WarmthLedger
from kvtui.warmth.model import TurnDecision


def begin_routed(
    ledger: WarmthLedger,
    route: RouteDecision | None,
    *,
    chat: str,
    character: str,
    source: str,
    gen_type: str,
    prompt: str | None,
    previous_prompt: str | None = None,
    chat_title: str | None = None,
    slot: int | None = None,
    known_extent: int | None = None,
    save_dir: Path | None = None,
    ram_cache_relied: bool = False,
) -> TurnTicket:
    """Note what the routing did (an eviction without a save) and begin the turn.

    ``route`` is ``None`` when routing failed (the request went on without kvtui's help).
    ``save_dir`` lets the restored file's size stand for the bytes read.
    """
    if route is None:
        d = TurnDecision(
            chat=chat,
            character=character,
            source=source,
            gen_type=gen_type,
            slot=slot,
            prompt=prompt,
            chat_title=chat_title,
            previous_prompt=previous_prompt,
            known_extent=known_extent,
        )
        return ledger.begin(d)
    if route.evicted_character:
        evicted_chat = route.evicted.chat if route.evicted is not None else chat
        ledger.note_evicted(evicted_chat, route.evicted_character, saved=route.evicted is not None)
    restored = route.restored
    read = 0
    if restored is not None and save_dir is not None:
        with contextlib.suppress(OSError, ValueError):
            read = (save_dir / Path(restored.filename).name).stat().st_size
    evicted = route.evicted
    d = TurnDecision(
        chat=chat,
        character=character,
        source=source,
        gen_type=gen_type,
        slot=route.slot,
        prompt=prompt,
        chat_title=chat_title,
        previous_prompt=previous_prompt,
        known_extent=known_extent,
        resident=route.resident,
        restored=restored.filename if restored is not None else None,
        restored_tokens=restored.n_restored if restored is not None else None,
        disk_read_bytes=read,
        disk_write_bytes=evicted.n_written if evicted is not None else 0,
        disk_write_tokens=evicted.n_saved if evicted is not None else 0,
        ram_cache_relied=ram_cache_relied,
    )
    return ledger.begin(d)
