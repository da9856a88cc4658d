"""One rule for slot ids: every way in refuses a bad id with the same words, before the server.

llama-server wraps a slot id modulo its slot count (slot 99 of 4 is slot 3), so a bad id must
never reach it. The rule lives once (``kvtui.llama.checks.slot_problem``); the client, the slot
book, the service, the CLI and the proxy all quote it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kvtui.cli import main
from kvtui.embedded.server import EmbeddedServer
from kvtui.llama import LlamaClient, SlotOutOfRange
from kvtui.llama.checks import slot_problem, slot_sentence
from kvtui.service import KvService, ServiceError
from kvtui.slots import SlotBook, UnknownSlot
from tests.test_proxy import make_settings, running_proxy

pytestmark = pytest.mark.server

BAD = 99
PROBLEM = "slot 99 does not exist: the server has 4 slots, 0 to 3"


def test_the_rule() -> None:
    assert slot_problem(BAD, 4) == PROBLEM
    assert slot_problem(-1, 4) == "slot -1 does not exist: the server has 4 slots, 0 to 3"
    assert slot_problem(1, 1) == "slot 1 does not exist: the server has 1 slot, 0 to 0"
    assert slot_problem(0, 0) == "slot 0 does not exist: the server reports no slots"
    assert slot_problem(True, 4) == "slot id True is not a whole number"
    assert slot_problem("2", 4) == "slot id '2' is not a whole number"
    assert [slot_problem(s, 4) for s in range(4)] == [None] * 4
    assert slot_sentence(PROBLEM) == "Slot 99 does not exist: the server has 4 slots, 0 to 3."


async def test_every_entry_point_gives_the_same_message(
    clean_server: EmbeddedServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KVTUI_CONFIG", str(tmp_path / "config.toml"))  # no user config
    save_dir = clean_server.save_dir
    assert save_dir is not None and clean_server.n_slots == 4
    sentence = slot_sentence(PROBLEM)
    seen: dict[str, str] = {}

    async with LlamaClient(clean_server.url, save_dir=save_dir) as client:
        with pytest.raises(SlotOutOfRange) as llama:
            await client.save(BAD, "wrapped.bin")
        seen["client"] = llama.value.message

    book = SlotBook(4)
    with pytest.raises(UnknownSlot) as booked:
        book.assign(BAD, "chat", "Seraphina")
    seen["book"] = booked.value.message

    settings = make_settings(clean_server, tmp_path)
    async with KvService(settings) as service:
        for name, call in (
            ("service save", service.save_slot(BAD, chat="chat", character="Seraphina")),
            ("service erase", service.erase(BAD)),
            ("service assign", service.assign(BAD, "chat", "Seraphina")),
        ):
            with pytest.raises(ServiceError) as failed:
                await call
            seen[name] = failed.value.message

    async with running_proxy(make_settings(clean_server, tmp_path / "proxy")) as h:
        await h.service.connect()
        resp = await h.client.post(f"/slots/{BAD}?action=save", json={"filename": "x.bin"})
        assert resp.status_code == 400
        message = resp.json()["error"]["message"]
        assert message == f"kvtui proxy: refused save: {PROBLEM}."
        seen["proxy"] = slot_sentence(message.removeprefix("kvtui proxy: refused save: ")[:-1])

    argv = ["--server", clean_server.url, "--save-dir", str(save_dir)]
    argv += ["--state-dir", str(tmp_path / "cli"), "erase", str(BAD)]
    code = await asyncio.to_thread(main, argv)
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    seen["cli"] = sentence if sentence in err else err

    assert seen == dict.fromkeys(seen, sentence), seen
    assert len(seen) == 7
    assert not (save_dir / "wrapped.bin").exists() and not (save_dir / "x.bin").exists()
