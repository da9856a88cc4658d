"""KvService across restarts (of kvtui, of llama-server, of both), its errors, and its lock."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

import kvtui.errors
from kvtui.embedded.server import EmbeddedServer, EmbeddedServerError
from kvtui.errors import KvtuiError
from kvtui.llama import LlamaError, ServerUnreachable
from kvtui.proxy.run import ProxyStartError
from kvtui.service import KvService, ServiceError
from kvtui.settings import ConfigError, Settings, load_settings
from kvtui.sillytavern import SillyTavernError
from kvtui.sillytavern.cards import CardError
from kvtui.sillytavern.png import PngError
from kvtui.slots import GenType, SlotBook, SlotBookError
from kvtui.statelock import StateLock
from kvtui.store.names import InvalidSaveName

PROMPT = "Story.\n***\nAlex: Hello, Seraphina!\nSeraphina:"


def settings_for(server: EmbeddedServer, tmp_path: Path) -> Settings:
    return load_settings(
        tmp_path / "config.toml",
        server_url=server.url,
        save_dir=server.save_dir,
        state_dir=tmp_path / "state",
    )


async def fill_and_save(service: KvService) -> int:
    decision = await service.route("chat", "Seraphina", GenType.NORMAL)
    await service.client.completion(PROMPT, n_predict=1, id_slot=decision.slot)
    saved = await service.save_slot(decision.slot)
    return saved.n_saved


async def test_kvtui_restart_keeps_a_live_cache(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = settings_for(clean_server, tmp_path)
    async with KvService(settings) as first:
        await first.refresh()
        await fill_and_save(first)
    async with KvService(settings) as second:
        await second.refresh()
        decision = await second.route("chat", "Seraphina", GenType.SWIPE)
        assert decision.resident and decision.restored is None


async def test_server_restart_while_kvtui_was_down_restores(tmp_path: Path) -> None:
    with EmbeddedServer(save_dir=tmp_path / "saves", n_slots=2, n_ctx=2048) as server:
        settings = settings_for(server, tmp_path)
        async with KvService(settings) as first:
            await first.refresh()
            n_saved = await fill_and_save(first)
        server.restart()
        async with KvService(settings) as second:
            snap = await second.refresh()
            assert any("no longer holds" in e.message for e in second.events.recent())
            assert [r.tokens for r in snap.rows if r.character == "Seraphina"] == [None]
            decision = await second.route("chat", "Seraphina", GenType.NORMAL)
            assert decision.restored is not None and decision.restored.n_restored == n_saved
            result = await second.client.completion(PROMPT, n_predict=1, id_slot=decision.slot)
            assert result.timings.cache_n >= n_saved - 1


async def test_an_invalid_save_is_refused_and_the_slot_keeps_its_cache(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    """A file that is not a whole slot save is never sent: llama-server would wipe the slot."""
    import pytest

    from kvtui.service import ServiceError

    settings = settings_for(clean_server, tmp_path)
    async with KvService(settings) as service:
        await service.refresh()
        await fill_and_save(service)
        store = service.require_store()
        slot = service.book.find("chat", "Seraphina")
        assert slot is not None
        before = {s.id: s.n_prompt_tokens for s in await service.client.slots()}[slot]
        assert before
        good = store.latest("chat", "Seraphina")
        assert good is not None
        truncated = store.new_filename("chat", "Seraphina")
        data = (store.directory / good.filename).read_bytes()
        for name, content in (
            (store.new_filename("chat", "Kael"), b"not a slot save"),
            (truncated, data[: len(data) // 2]),
        ):
            (store.directory / name).write_bytes(content)
            if name == truncated:  # kvtui's own save, cut short on disk after its sidecar
                sidecar = (store.directory / f"{good.filename}.json").read_bytes()
                (store.directory / f"{name}.json").write_bytes(sidecar)
            store.rescan()
            with pytest.raises(ServiceError, match="keeps its cache|cannot be loaded"):
                await service.load(name, slot)
            assert service.book.find("chat", "Seraphina") == slot
            after = {s.id: s.n_prompt_tokens for s in await service.client.slots()}[slot]
            assert after == before
        # The truncated newest file never wins over the good one.
        latest = store.latest("chat", "Seraphina")
        assert latest is not None and latest.filename == good.filename


def test_a_save_the_server_could_not_write_is_not_a_save() -> None:
    from kvtui.store import is_valid_save

    assert is_valid_save(4096, 2_000_000)
    assert not is_valid_save(4096, 0)  # disk full: the server still answers 200
    assert not is_valid_save(0, 48)  # an empty slot


async def test_assigning_over_a_used_character_saves_it_first(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = settings_for(clean_server, tmp_path)
    async with KvService(settings) as service:
        await service.refresh()
        decision = await service.route("chat", "Seraphina", GenType.NORMAL)
        await service.client.completion(PROMPT, n_predict=1, id_slot=decision.slot)
        store = service.require_store()
        assert store.latest("chat", "Seraphina") is None
        await service.assign(decision.slot, "chat", "Kael")
        store.rescan()
        latest = store.latest("chat", "Seraphina")
        assert latest is not None and latest.n_saved
        assert service.book.find("chat", "Kael") == decision.slot


@pytest.mark.parametrize(
    "error",
    [
        LlamaError,
        ServiceError,
        SlotBookError,
        InvalidSaveName,
        SillyTavernError,
        CardError,
        PngError,
        ConfigError,
        ProxyStartError,
        EmbeddedServerError,
    ],
)
def test_every_expected_failure_has_one_root_with_a_hint(error: type[Exception]) -> None:
    assert issubclass(error, KvtuiError)


def test_an_error_says_what_happened_and_what_to_do() -> None:
    err = ServerUnreachable("No answer from http://127.0.0.1:1.")
    assert err.message == "No answer from http://127.0.0.1:1."
    assert "--server URL" in err.hint and str(err) == f"{err.message} {err.hint}"
    plain = ServiceError("Slot 9 does not exist.")
    assert str(plain) == "Slot 9 does not exist." and plain.hint == ""
    assert kvtui.errors.KvtuiError("x", "Do y.").__str__() == "x Do y."


def test_the_state_lock_is_private_and_names_its_holder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    lock = StateLock(state)
    assert lock.acquire("dashboard")
    try:
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert stat.S_IMODE(lock.path.stat().st_mode) == 0o600
        other = (
            "import sys\n"
            "from pathlib import Path\n"
            "from kvtui.statelock import StateLock\n"
            f"lock = StateLock(Path({str(state)!r}))\n"
            "print(lock.acquire('headless'), lock.holder())\n"
        )
        out = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", other],
            capture_output=True,
            text=True,
            check=True,
        )
        refused, holder = out.stdout.split(maxsplit=1)
        assert refused == "False" and holder.strip().endswith("dashboard")
    finally:
        lock.release()
    again = StateLock(state)
    assert again.acquire("proxy")
    again.release()


async def test_writes_behind_the_loop_keep_order_newest_wins_and_report_errors(
    tmp_path: Path,
) -> None:
    from kvtui.service.writes import WriteBehind

    done: list[str] = []
    errors: list[tuple[object, str]] = []
    writes = WriteBehind(lambda key, err: errors.append((key, str(err))))

    def write(name: str, text: str) -> None:
        (tmp_path / name).write_text(text)
        done.append(f"{name}={text}")

    def refuse() -> None:
        raise PermissionError("read-only")

    writes.submit("a", lambda: write("a", "1"))
    writes.submit("b", lambda: write("b", "1"))
    writes.submit("bad", refuse)
    writes.submit("a", lambda: write("a", "2"))
    await writes.flush()
    assert not writes.queued("a")
    assert (tmp_path / "a").read_text() == "2" and (tmp_path / "b").read_text() == "1"
    assert done[-1] == "a=2" and "a=1" not in done[1:]  # a=1 ran first or was replaced
    assert errors == [("bad", "read-only")]


async def test_the_book_is_on_disk_once_the_service_is_closed(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    settings = settings_for(clean_server, tmp_path)
    async with KvService(settings) as service:
        await service.assign(1, "chat", "Kael")
    assert SlotBook.load(settings.book_path).find("chat", "Kael") == 1


async def test_save_now_twice_writes_no_duplicate(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    """An unchanged slot is not saved again ("save now" twice, a switch after an autosave)."""
    settings = settings_for(clean_server, tmp_path)
    async with KvService(settings) as service:
        await service.refresh()
        await fill_and_save(service)
        store = service.require_store()
        before = sorted(e.filename for e in store.entries())
        again = await service.save_all()
        assert again.done and all(o.unchanged for o in again.done)
        assert sorted(e.filename for e in store.entries()) == before
        slot = service.book.find("chat", "Seraphina")
        assert slot is not None
        await service.complete("Alex: and now?\nSeraphina:", slot=slot, n_predict=2)
        changed = await service.save_slot(slot)
        assert not changed.unchanged
        assert len(store.entries()) == len(before) + 1


async def test_a_save_right_after_a_turn_fingerprints_that_turn_not_the_one_before(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    """Recorded prompts are written behind the loop; the sidecar must still describe the prompt
    the slot holds now, not the previous one still on disk."""
    from kvtui.fingerprint import PromptFingerprint

    settings = settings_for(clean_server, tmp_path)
    longer = PROMPT + " Hello, Alex.\nAlex: The bridge?\nSeraphina:"
    async with KvService(settings) as service:
        await service.refresh()
        decision = await service.route("chat", "Seraphina", GenType.NORMAL)
        service.record_prompt("chat", "Seraphina", PROMPT, {"prompt": PROMPT})
        await service.flush()  # the first prompt is on disk
        service.record_prompt("chat", "Seraphina", longer, {"prompt": longer, "n_predict": 1})
        await service.client.completion(longer, n_predict=1, id_slot=decision.slot)
        saved = await service.save_slot(decision.slot)  # no flush: the write may be queued
        assert service.store is not None
        meta = service.store.read_meta(saved.filename)
    assert meta is not None and isinstance(meta.fingerprint, dict)
    fingerprint = PromptFingerprint.from_json(meta.fingerprint)
    assert fingerprint.is_prefix_of(longer) and meta.fingerprint["length"] == len(longer)
