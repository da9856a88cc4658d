"""A chat switch seats each of the new chat's characters in the slot it last held.

What a released slot still holds of a character's card is a prefix llama-server reuses for
nothing, so that character gets it back first; an earlier member of the new chat never takes a
later member's own slot (in the real-SillyTavern session this cost a group's speaker the
prefix of its card, and kvtui prefilled more than llama-server alone).
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from kvtui.embedded.server import EmbeddedServer
from kvtui.service import KvService
from kvtui.slots import GenType
from tests.test_proxy import isolated_config, make_settings

__all__ = ["isolated_config"]


def _complete(server: EmbeddedServer, slot: int, prompt: str) -> None:
    body = {"prompt": prompt, "n_predict": 2, "id_slot": slot, "cache_prompt": True}
    req = urllib.request.Request(
        server.url + "/completion",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert resp.status == 200


async def test_each_character_gets_back_the_slot_it_last_held(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = make_settings(clean_server, tmp_path, autosave_every=100)
    async with KvService(settings) as service:
        await service.refresh()
        for character in ("Kael", "Mira"):
            decision = await service.route("chat A", character, GenType.NORMAL)
            _complete(clean_server, decision.slot, f"{character}'s card. " * 20)
        held = {r.character: r.slot for r in service.book.snapshot() if r.character}
        assert held == {"Kael": 0, "Mira": 1}

        # Seraphina comes first in the new chat's members but held no slot: she takes a free
        # one, not Kael's.
        saved = await service.switch_chat("chat B", ["Seraphina", "Kael", "Mira"])
        assert sorted(s.character for s in saved) == ["Kael", "Mira"]
        seats = {r.character: (r.chat, r.slot) for r in service.book.snapshot() if r.character}
        assert seats == {"Kael": ("chat B", 0), "Mira": ("chat B", 1), "Seraphina": ("chat B", 2)}
        slots = {s.id: s.n_prompt_tokens or 0 for s in await service.client.slots()}
        assert slots[0] > 0 and slots[1] > 0  # released, not erased: the cards are still there


async def test_more_characters_than_slots_keep_their_own_slots_first(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = make_settings(clean_server, tmp_path, autosave_every=100)
    async with KvService(settings) as service:
        await service.refresh()
        for character in ("A", "B", "C", "D"):
            decision = await service.route("chat A", character, GenType.NORMAL)
            _complete(clean_server, decision.slot, f"{character}'s card. " * 20)
        # Six members for four slots: the four who held a slot keep it, in any member order.
        await service.switch_chat("chat B", ["E", "D", "F", "C", "B", "A"])
        seats = {r.character: r.slot for r in service.book.snapshot() if r.character}
        assert seats == {"A": 0, "B": 1, "C": 2, "D": 3}
