"""Every routed turn through the real proxy is booked in turns.jsonl with its reason, and
``kvtui stats --json`` adds up to what the server itself reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kvtui.cli import main
from kvtui.embedded.server import EmbeddedServer
from kvtui.events import Kind
from tests.test_proxy import make_settings, running_proxy
from tests.test_proxy_routing import GROUP_CHAT, GroupChat

pytestmark = pytest.mark.server


async def test_turns_are_booked_with_reasons_and_add_up(
    clean_server: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(clean_server, tmp_path, autosave_every=100)
    served: list[dict[str, Any]] = []
    async with running_proxy(settings) as h:
        h.service.set_current_chat(GROUP_CHAT)
        chat = GroupChat(h, ["Seraphina", "Kael"])
        for speaker in ("Seraphina", "Kael", "Seraphina"):
            served.append(await chat.speak(speaker))
            chat.user_says(f"And then, {speaker}?")
        slot = h.service.resident_slot(GROUP_CHAT, "Kael")
        assert slot is not None
        await h.service.erase(slot)  # Kael's cache is gone and he has no save
        served.append(await chat.speak("Kael"))
        await h.proxy.app.extras.ledger.drain()
        decisions = [e.message for e in h.service.events.recent() if e.kind is Kind.ROUTE]
    assert sum(" cached" in m and "slot" in m for m in decisions) == len(served)
    lines = (settings.state_dir / "turns.jsonl").read_text(encoding="utf-8").splitlines()
    turns = [json.loads(line) for line in lines]
    assert [t["character"] for t in turns] == ["Seraphina", "Kael", "Seraphina", "Kael"]
    assert all(t["chat"] == GROUP_CHAT and t["source"] for t in turns)
    assert [t["prompt_n"] for t in turns] == [r["timings"]["prompt_n"] for r in served]
    assert [t["cache_n"] for t in turns] == [r["timings"]["cache_n"] for r in served]
    for t in turns:
        assert t["new_tokens"] + t["lost_tokens"] == t["prompt_n"]
    last = turns[-1]
    assert last["lost_tokens"] > 0 and last["reason"] == "no_save"

    assert main(["stats", "--json", "--state-dir", str(settings.state_dir)]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["prefilled_tokens"] == sum(r["timings"]["prompt_n"] for r in served)
    by_reason = sum(r["tokens"] for r in summary["by_reason"])
    assert (
        by_reason == summary["lost_tokens"] == summary["prefilled_tokens"] - summary["new_tokens"]
    )
