"""The two calls the proxy makes: build the engine once, inject into each generation request.

:func:`build_engine` wires recall to kvtui's settings (``recall_*`` fields, the memory books'
``memory_book_name``, ``st_dir``, ``state_dir``); :func:`inject` runs
:meth:`~kvtui.recall.engine.RecallEngine.apply` off the event loop and never raises: if recall
itself fails, the request goes on exactly as the client sent it and the telemetry says why.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kvtui.memory.lorebook import worlds_dir
from kvtui.memory.settings import MemorySettings
from kvtui.recall.books import memory_books
from kvtui.recall.engine import RecallEngine
from kvtui.recall.outcome import RecallOutcome, RecallTelemetry
from kvtui.recall.settings import RecallSettings
from kvtui.sillytavern.data import SillyTavernData
from kvtui.slots import GenType

STATE_FILE = "recall.json"


def build_engine(settings: Any, st_data: SillyTavernData | None = None) -> RecallEngine:
    """The recall engine for kvtui's ``settings`` (a ``Settings``) and SillyTavern data dir."""
    st_dir: Path | None = getattr(settings, "st_dir", None)
    state_dir: Path = settings.state_dir
    books = memory_books(
        worlds_dir(st_dir),
        MemorySettings.from_settings(settings).memory_book_name,
        st_data.find_chat if st_data is not None else None,
    )
    return RecallEngine(
        RecallSettings.from_settings(settings), books, state_path=state_dir / STATE_FILE
    )


async def inject(
    engine: RecallEngine,
    body: dict[str, Any],
    *,
    chat: str,
    character: str,
    gen_type: GenType,
    user_name: str | None = None,
    names: Sequence[str] = (),
    client: Mapping[str, Any] | None = None,
    keep: bool = True,
) -> RecallOutcome:
    """:meth:`RecallEngine.apply` in a worker thread; ``body`` unchanged if recall fails."""
    try:
        return await asyncio.to_thread(
            engine.apply,
            body,
            chat=chat,
            character=character,
            gen_type=gen_type,
            user_name=user_name,
            names=names,
            client=client,
            keep=keep,
        )
    except Exception as err:  # noqa: BLE001 - recall must never block a generation
        failed = RecallTelemetry("error", warnings=(f"Recall failed, request sent as is: {err!r}",))
        return RecallOutcome(body, failed)
