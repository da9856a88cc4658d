"""Other extensions' background jobs through the real proxy never cost a character its cache.

The server keeps no host-memory prompt cache (``--cache-ram 0``), so a lost cache shows as a
smaller ``cache_n`` on the character's next turn — the control proves the test can fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvtui.embedded.server import EmbeddedServer
from tests.test_proxy import (
    USER,
    card,
    complete,
    make_settings,
    running_proxy,
    st_body,
)

pytestmark = pytest.mark.server

CHAT = "Seraphina - 2026-05-03@18h45m46s123ms"
SCENE = (
    "You are a memory writer. Summarise the scene below as JSON with title, content, keywords."
    "\n\n=== SCENE TRANSCRIPT ===\nAlex: The bridge fell.\nSeraphina: We crossed the river."
    "\n=== END SCENE ===\n"
)
SUMMARIZE = (
    "\n[Pause your roleplay. Summarize the most important facts and events in the story so "
    "far. Limit the summary to 100 words or less.]\n"
)


@pytest.fixture(scope="module")
def cold_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    server = EmbeddedServer(
        save_dir=tmp_path_factory.mktemp("jobs-saves"), n_slots=2, n_ctx=4096, cache_ram_mib=0
    )
    server.start()
    yield server
    server.stop()


def _prompt(lines: list[tuple[str, str]]) -> str:
    return card("Seraphina") + "".join(f"\n{n}: {t}" for n, t in lines) + "\nSeraphina:"


async def _turns(h: Any, job: dict[str, Any] | None, direct: str | None = None) -> int:
    """Two turns of Seraphina with ``job`` between them; the second turn's ``cache_n``."""
    h.service.set_current_chat(CHAT)
    lines = [(USER, "Hello there, healer of the glade.")]
    first = await complete(h.client, st_body(_prompt(lines), [f"\n{USER}:"]))
    lines.append(("Seraphina", first["content"]))
    if job is not None:
        if direct is None:
            resp = await h.client.post("/completion", json=job)
        else:  # the control: what the job does to the slot without kvtui
            slot = h.service.resident_slot(CHAT, "Seraphina")
            async with httpx.AsyncClient(timeout=120) as raw:
                resp = await raw.post(f"{direct}/completion", json={**job, "id_slot": slot})
        assert resp.status_code == 200, resp.text
    lines.append((USER, "Thank you."))
    second = await complete(h.client, st_body(_prompt(lines), [f"\n{USER}:"]))
    return int(second["timings"]["cache_n"])


@pytest.mark.parametrize("shape", ["memorybooks", "summarize"])
async def test_a_job_between_two_turns_keeps_the_cache(
    cold_server: EmbeddedServer, tmp_path: Path, shape: str
) -> None:
    async with running_proxy(make_settings(cold_server, tmp_path / "none")) as h:
        await h.service.clear_all()
        baseline = await _turns(h, None)
    lines = [(USER, "Hello there, healer of the glade.")]
    if shape == "memorybooks":
        job = {"prompt": SCENE, "n_predict": 12, "temperature": 0}
    else:  # SillyTavern's Summarize: the chat's own prompt with its instruction appended
        job = {"prompt": _prompt(lines) + " …" + SUMMARIZE, "n_predict": 12, "temperature": 0}
    async with running_proxy(make_settings(cold_server, tmp_path / "job")) as h:
        await h.service.clear_all()
        with_job = await _turns(h, job)
        assert any("Background job" in e.message for e in h.service.events.recent())
    assert with_job == baseline
    async with running_proxy(make_settings(cold_server, tmp_path / "control")) as h:
        await h.service.clear_all()
        control = await _turns(h, {"prompt": SCENE, "n_predict": 12}, direct=cold_server.url)
    assert control < baseline  # the same job without kvtui's care costs the cache
