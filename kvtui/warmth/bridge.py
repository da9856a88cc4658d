"""From the router's :class:`~kvtui.service.outcomes.RouteDecision` to a :class:`TurnDecision`.

Where the proxy calls the warmth ledger (``ledger = WarmthLedger(settings.state_dir,
tokenize=service.client.tokenize, policy=WarmthPolicy.from_settings(settings), on_error=…)``):

1. Once connected, before routing anything: ``info = await detect_ram_cache(client,
   avoid=<slots the book holds>)`` and ``ledger.configure_ram_cache(info, bytes_per_token=…,
   n_ctx_total=props.n_ctx * props.total_slots)`` (:func:`bytes_per_token` measures the
   first from the saves).
2. Right after ``KvService.route`` returns (``None`` when it failed): :func:`begin_routed`, with
   the character's previous prompt read *before* the new one is recorded; keep the ticket.
3. When the reply ends, after ``finish_generation``: ``ledger.finish(ticket,
   observer.final["timings"], disk_write_bytes=saved.n_written, disk_write_tokens=saved.n_saved)``
   (zeros without an autosave). Nothing is recorded without timings (a cut-off stream).
4. When kvtui sees llama-server restarted: ``ledger.note_server_restart()``; after a chat switch
   that erased the slots: ``ledger.note_chat_switch()``. On shutdown: ``await ledger.aclose()``.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from kvtui.service.outcomes import RouteDecision
from kvtui.store import SaveStore
from kvtui.warmth.ledger import TurnTicket, WarmthLedger
from kvtui.warmth.model import TurnDecision

if TYPE_CHECKING:
    from kvtui.service import KvService


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


def saved_prompt_chars(store: SaveStore | None, filename: str) -> int | None:
    """Length in characters of the prompt a save holds (its sidecar's fingerprint), or ``None``.
    Blocking: the ledger calls it in a worker thread, only for a restore that lost tokens."""
    if store is None:
        return None
    try:
        meta = store.read_meta(Path(filename).name)
    except (OSError, ValueError):
        return None
    if meta is None or not isinstance(meta.fingerprint, dict):
        return None
    length = meta.fingerprint.get("length")
    return length if isinstance(length, int) and length >= 0 else None


def saved_chars_reader(service: KvService) -> Callable[[str], int | None]:
    """:func:`saved_prompt_chars` on the service's save directory, for the ledger."""
    return lambda filename: saved_prompt_chars(service.store, filename)


def bytes_per_token(store: SaveStore | None, default: float = 528.0) -> float:
    """The state size per token of this model, measured on its saves (median of the newest
    50); ``default`` (the tiny test model's) when there are none."""
    if store is None:
        return default
    ratios = []
    for entry in sorted(store.entries(), key=lambda e: e.sort_key, reverse=True)[:50]:
        meta = store.read_meta(entry.filename)
        if meta is not None and meta.n_saved and meta.n_written:
            ratios.append(meta.n_written / meta.n_saved)
    return statistics.median(ratios) if ratios else default
