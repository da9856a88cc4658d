"""``kvtui doctor``'s save-directory checks against the real server: private probes that are
always removed and never listed, and a save directory kvtui cannot use."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvtui.doctor import Status, run_doctor
from kvtui.embedded.server import EmbeddedServer
from kvtui.llama import LlamaClient
from kvtui.llama.models import SaveResult
from kvtui.settings import Settings
from kvtui.store import SaveDirUnreadable, SaveStore, is_private_name

pytestmark = pytest.mark.server


class RecordingClient(LlamaClient):
    """The real client, remembering the names it asked the server to save."""

    saved: list[str]

    async def save(self, slot: int, filename: str) -> SaveResult:
        self.saved.append(filename)
        return await super().save(slot, filename)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def settings_for(server: EmbeddedServer, save_dir: Path | None) -> Settings:
    return Settings(server_url=server.url, save_dir=save_dir)


async def doctor(server: EmbeddedServer, save_dir: Path | None) -> tuple[dict[str, str], list[str]]:
    client = RecordingClient(server.url, save_dir=save_dir)
    client.saved = []
    try:
        checks = await run_doctor(settings_for(server, save_dir), client)
    finally:
        await client.aclose()
    return {c.name: c.status for c in checks}, client.saved


async def test_the_probe_is_private_and_removed(
    clean_server: EmbeddedServer, save_dir: Path
) -> None:
    statuses, saved = await doctor(clean_server, save_dir)
    assert statuses["save directory"] is Status.OK
    [probe] = saved
    assert is_private_name(probe) and probe.startswith(".kvtui-probe-")
    assert names(save_dir) == []


async def test_without_a_save_dir_the_probe_is_never_listed_and_repair_removes_it(
    clean_server: EmbeddedServer, save_dir: Path
) -> None:
    statuses, [probe] = await doctor(clean_server, None)
    assert statuses["save directory"] is Status.WARN
    assert names(save_dir) == [probe]  # the server's directory
    store = SaveStore(save_dir)
    assert store.entries(include_damaged=True) == [] and store.get(probe) is None
    assert store.repair() == ["Removed 1 incomplete file(s) left by an interrupted save."]
    assert names(save_dir) == []


async def test_an_unusable_save_dir_fails_with_a_fix(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "saves.txt"
    not_a_dir.write_text("")
    async with LlamaClient(clean_server.url) as client:
        checks = {
            c.name: c for c in await run_doctor(settings_for(clean_server, not_a_dir), client)
        }
    check = checks["save directory"]
    assert check.status is Status.FAIL and "is not a directory" in check.detail
    assert "--save-dir" in check.fix


def test_an_unreadable_save_dir_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "x_20260101000000_character_A.bin").write_bytes(b"")

    def denied(_path: object) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("kvtui.store.store.os.scandir", denied)
    with pytest.raises(SaveDirUnreadable) as caught:
        SaveStore(tmp_path).entries()
    message = str(caught.value)
    assert "\n" not in message and "Permission denied" in message and "--save-dir" in message
