"""Scenario 4.5 of the seed: a save of a character from chat B, loaded while chat A is open,
serves that character's next turn in chat A."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvtui.embedded.server import EmbeddedServer
from tests.test_proxy import USER, card, complete, make_settings, running_proxy, st_body

pytestmark = pytest.mark.server


def _turn(chat: str, lines: list[tuple[str, str]]) -> dict[str, Any]:
    prompt = card("Kael") + "".join(f"\n{n}: {t}" for n, t in lines) + "\nKael:"
    body = st_body(prompt, [f"\n{USER}:"])
    body["kvtui"] = {"chat": chat, "character": "Kael"}
    return body


async def test_a_save_from_another_chat_serves_the_open_chat(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    lines = [(USER, "The river is rising, Kael. Do we cross tonight or wait for dawn?")]
    async with running_proxy(make_settings(clean_server, tmp_path)) as h:
        first = await complete(h.client, _turn("Chat B", lines))
        lines.append(("Kael", first["content"]))  # chat A is a branch of this scene
        slot = h.service.resident_slot("Chat B", "Kael")
        assert slot is not None
        saved = await h.service.save_slot(slot, tag="crossing")
        # The user opens chat A (another character speaks there first: a chat switch).
        mira = st_body(card("Mira") + f"\n{USER}: Hello\nMira:", [f"\n{USER}:"])
        mira["kvtui"] = {"chat": "Chat A", "character": "Mira"}
        await complete(h.client, mira)
        assert h.service.current_chat == "Chat A"
        loaded = await h.service.load(saved.filename)
        assert loaded.chat == "Chat A" and loaded.from_other_chat
        # Kael's next turn in chat A uses the loaded cache (a branch of chat B's scene).
        result = await complete(h.client, _turn("Chat A", [*lines, (USER, "Well?")]))
        del first
        assert result["id_slot"] == loaded.slot
        # All of it but the reply's re-rendered first tokens (without the load: none of it).
        assert result["timings"]["cache_n"] >= 0.9 * saved.n_saved
        assert any(
            "Chat B" in e.message and "Chat A" in e.message for e in h.service.events.recent()
        )
