"""The proxy's two calls: the engine built from kvtui's settings, and injection that never fails."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kvtui.memory.contract import Memory as Written
from kvtui.memory.lorebook import EntrySettings, Lorebook
from kvtui.memory.settings import MemorySettings
from kvtui.recall import RecallSettings
from kvtui.recall.hook import build_engine, inject
from kvtui.settings import Settings
from kvtui.sillytavern import SillyTavernData, copy_sample
from kvtui.sillytavern.sample import SOLO_CHAT_ID
from kvtui.slots import GenType


def st_request(user: str) -> dict[str, Any]:
    prompt = (
        "Seraphina guards the forest.\n***\nSeraphina: Welcome.\n{{kvtui_memories}}\n"
        f"Alex: {user}\nSeraphina:"
    )
    return {"prompt": prompt, "stop": ["\nAlex:"], "cache_prompt": True, "stream": True}


async def test_build_engine_reads_kvtui_settings_and_the_memory_book(tmp_path: Path) -> None:
    st = SillyTavernData(copy_sample(tmp_path / "st"))
    settings = SimpleNamespace(
        st_dir=st.user_dir,
        state_dir=tmp_path / "state",
        recall_top_k=1,
        recall_scan_depth=1,
        memory_book_name="memories of {{chat}}",
    )
    engine = build_engine(settings, st)
    assert (engine.settings.top_k, engine.settings.scan_depth) == (1, 1)
    [path] = engine.source.paths(SOLO_CHAT_ID)  # type: ignore[attr-defined]
    assert path == st.user_dir / "worlds" / f"memories of {SOLO_CHAT_ID}.json"
    book = Lorebook.open(path, SOLO_CHAT_ID)
    entry = EntrySettings.from_memory(MemorySettings())
    book.add_memory(Written("Tea", "Mint tea at dusk.", ("tea",)), (0, 2), entry)
    out = await inject(
        engine, st_request("Tea?"), chat=SOLO_CHAT_ID, character="Seraphina",
        gen_type=GenType.NORMAL,
    )  # fmt: skip
    assert "Welcome.\nMint tea at dusk.\nAlex: Tea?" in out.body["prompt"]
    saved = json.loads((tmp_path / "state" / "recall.json").read_text(encoding="utf-8"))
    assert list(saved["characters"]) == [f"{SOLO_CHAT_ID}\x1fSeraphina"]


def test_real_settings_give_the_defaults(tmp_path: Path) -> None:
    engine = build_engine(Settings(state_dir=tmp_path))
    assert engine.settings == RecallSettings()
    assert engine.state_path == tmp_path / "recall.json"


async def test_inject_never_raises(tmp_path: Path) -> None:
    engine = build_engine(Settings(state_dir=tmp_path))

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("boom")

    engine.apply = broken  # type: ignore[method-assign,assignment]
    body = st_request("hi")
    out = await inject(engine, body, chat="c", character="S", gen_type=GenType.NORMAL)
    assert out.body is body and out.telemetry.macro == "error"
    assert "boom" in out.telemetry.warnings[0]
