"""The save store on a real directory: names, sidecars, listing, rotation, deletion, watching."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kvtui.store import (
    UNPARSED_CHAT,
    InvalidSaveName,
    SaveMeta,
    SaveStore,
    format_save_name,
    is_valid_save,
)
from tests.slotfiles import slot_bytes

T0 = datetime(2025, 11, 17, 12, 0, 0, tzinfo=UTC)


def save(
    store: SaveStore,
    chat: str,
    character: str,
    when: datetime,
    tag: str | None = None,
    *,
    meta: bool = True,
) -> str:
    """A save as the service makes one: name, the server writes the file, then the sidecar."""
    name = store.new_filename(chat, character, tag=tag, when=when)
    (store.directory / name).write_bytes(slot_bytes(42))
    if meta:
        store.write_meta(name, SaveMeta(chat=chat, character=character, tag=tag, n_saved=42))
    return name


def test_new_filename_never_reuses_a_name(tmp_path: Path) -> None:
    store = SaveStore(tmp_path)
    first = store.new_filename("Forest Party", "Alice", when=T0)
    second = store.new_filename("Forest Party", "Alice", when=T0)  # reserved, not yet written
    (tmp_path / second).write_bytes(slot_bytes())
    third = SaveStore(tmp_path).new_filename(
        "Forest Party", "Alice", when=T0 + timedelta(seconds=1)
    )
    assert first == format_save_name("Forest Party", "Alice", T0)
    assert second == format_save_name("Forest Party", "Alice", T0 + timedelta(seconds=1))
    assert third == format_save_name("Forest Party", "Alice", T0 + timedelta(seconds=2))
    assert sorted([first, second, third]) == [first, second, third]


def test_new_filename_skips_an_orphaned_sidecar(tmp_path: Path) -> None:
    name = format_save_name("c", "n", T0)
    (tmp_path / (name + ".json")).write_text("{}")
    assert SaveStore(tmp_path).new_filename("c", "n", when=T0) != name


def test_sidecar_round_trip_keeps_raw_names(tmp_path: Path) -> None:
    store = SaveStore(tmp_path)
    meta = SaveMeta(
        chat="Forest Party",
        character="Серафина",
        tag="важный момент",
        n_saved=321,
        n_written=4096,
        model="tiny.gguf",
        build_info="b1-abc",
        n_ctx=1024,
        slot=2,
        saved_at=T0,
    )
    name = store.new_filename(meta.chat, meta.character, tag=meta.tag, when=T0)
    (tmp_path / name).write_bytes(slot_bytes(321, 4096))
    store.write_meta(name, meta)
    assert store.read_meta(name) == meta
    assert json.loads((tmp_path / (name + ".json")).read_text())["character"] == "Серафина"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, name + ".json"]  # no temp files
    [entry] = store.entries()
    assert (entry.chat, entry.character, entry.tag) == ("Forest Party", "Серафина", "важный момент")
    assert (entry.chat_key, entry.character_key) == ("Forest_Party", "Серафина")
    assert entry.n_saved == 321 and entry.size == 4096 and entry.timestamp == T0
    assert entry.meta == meta and entry.slot == 2


def test_entries_without_sidecars_use_the_name(tmp_path: Path) -> None:
    store = SaveStore(tmp_path)
    name = save(store, "Forest Party", "Alice", T0, meta=False)
    [entry] = store.entries()
    assert (entry.filename, entry.chat, entry.character, entry.tag) == (
        name,
        "Forest_Party",
        "Alice",
        None,
    )
    assert entry.n_saved == 42 and entry.meta is None and not entry.legacy  # from the header


def test_bad_or_foreign_sidecars_are_ignored(tmp_path: Path) -> None:
    store = SaveStore(tmp_path)
    broken = save(store, "c", "Alice", T0, meta=False)
    (tmp_path / (broken + ".json")).write_text("{not json")
    other = save(store, "c", "Bob", T0, meta=False)
    (tmp_path / (other + ".json")).write_text(json.dumps({"chat": "x", "character": "Eve"}))
    (tmp_path / "orphan.bin.json").write_text(json.dumps({"chat": "x", "character": "Eve"}))
    (tmp_path / "manual.bin").write_bytes(
        slot_bytes()
    )  # not a save name, but a hand-written sidecar
    (tmp_path / "manual.bin.json").write_text(
        json.dumps({"chat": "c", "character": "Zoe", "saved_at": "2020-01-01T00:00:00"})
    )
    store.rescan()
    entries = {e.character: e for e in store.entries()}
    assert (entries["Alice"].meta, entries["Bob"].meta) == (None, None)
    manual = entries["manual"]  # its name decides: a file of its own, never anyone's save
    assert (manual.chat, manual.parsed, manual.meta is not None) == (UNPARSED_CHAT, False, True)
    assert manual.meta is not None and manual.meta.saved_at == datetime(2020, 1, 1, tzinfo=UTC)
    assert store.latest("c", "Zoe") is None and store.rotate("c", "Zoe", keep=0) == []


def test_extension_and_unknown_files_are_listed_not_misparsed(tmp_path: Path) -> None:
    for name in [
        "chat1_20240115143022_character_Alice.bin",
        "chat1_20240115143022_slot2.bin",
        "chat1_slot1_20240115143022.bin",
        "persist.bin",
        "notes.txt",
        ".kvtui-123.tmp",
        ".hidden.bin",
    ]:
        (tmp_path / name).write_bytes(slot_bytes())
    (tmp_path / "subdir.bin").mkdir()
    store = SaveStore(tmp_path)
    by_name = {e.filename: e for e in store.entries()}
    assert set(by_name) == {
        "chat1_20240115143022_character_Alice.bin",
        "chat1_20240115143022_slot2.bin",
        "chat1_slot1_20240115143022.bin",
        "persist.bin",
    }
    current = by_name["chat1_20240115143022_character_Alice.bin"]
    assert (current.chat_key, current.character_key, current.legacy) == ("chat1", "Alice", False)
    legacy = by_name["chat1_20240115143022_slot2.bin"]
    assert (legacy.chat, legacy.character, legacy.slot, legacy.legacy) == (
        "chat1",
        "slot 2",
        2,
        True,
    )
    unknown = by_name["persist.bin"]
    assert (unknown.chat, unknown.character, unknown.chat_key, unknown.parsed) == (
        UNPARSED_CHAT,
        "persist",
        "",
        False,
    )
    assert abs(unknown.timestamp.timestamp() - (tmp_path / "persist.bin").stat().st_mtime) < 1
    # all of them can be loaded by name; none is another character's latest save
    assert all(store.exists(name) for name in by_name)
    assert store.latest("chat1", "Alice") == current
    assert store.latest("chat1", "slot 2") is None
    assert store.rotate("chat1", "Alice", keep=0) == ["chat1_20240115143022_character_Alice.bin"]
    assert len(store.entries()) == 3


@pytest.mark.parametrize("bad", ["../x.bin", "a/b.bin", "..", "", "/etc/passwd", "x\x00.bin"])
def test_path_for_refuses_names_outside_the_directory(tmp_path: Path, bad: str) -> None:
    store = SaveStore(tmp_path)
    with pytest.raises(InvalidSaveName):
        store.path_for(bad)
    with pytest.raises(InvalidSaveName):
        store.delete(bad)
    with pytest.raises(InvalidSaveName):
        store.get(bad)


def test_delete_removes_the_sidecar(tmp_path: Path) -> None:
    store = SaveStore(tmp_path)
    name = save(store, "c", "n", T0)
    assert store.get(name) is not None
    assert store.delete(name) is True
    assert list(tmp_path.iterdir()) == []
    assert store.get(name) is None and store.entries() == []
    assert store.delete(name) is False


def test_rotation_keeps_the_newest_autosaves_and_every_tagged_save(tmp_path: Path) -> None:
    store = SaveStore(tmp_path)
    autos = [save(store, "Forest Party", "Ann", T0 + timedelta(minutes=i)) for i in range(6)]
    tagged = [
        save(store, "Forest Party", "Ann", T0 - timedelta(days=1), tag="важный момент"),
        save(store, "Forest Party", "Ann", T0 - timedelta(days=2), tag="end"),
    ]
    others = [
        save(store, "Forest Party", "Anna", T0 - timedelta(days=3)),
        save(store, "Other chat", "Ann", T0 - timedelta(days=3)),
        save(store, "Forest_Party", "Ann", T0 - timedelta(days=3)),
    ]
    deleted = store.rotate("Forest Party", "Ann", keep=3)
    assert sorted(deleted) == sorted(autos[:3])
    left = {p.name for p in tmp_path.iterdir()}
    expected = set(autos[3:] + tagged + others)
    assert left == expected | {name + ".json" for name in expected}
    assert store.rotate("Forest Party", "Ann", keep=3) == []
    with pytest.raises(ValueError):
        store.rotate("Forest Party", "Ann", keep=-1)


def test_rotation_never_deletes_the_save_just_written(tmp_path: Path) -> None:
    store = SaveStore(tmp_path)
    # the extension stamps names in local time: in UTC+3 its saves look three hours "newer"
    future = [
        format_save_name("c", "Alice", T0 + timedelta(hours=3, minutes=i), None) for i in range(3)
    ]
    for name in future:
        (tmp_path / name).write_bytes(slot_bytes())
    just_written = save(store, "c", "Alice", T0)
    deleted = store.rotate("c", "Alice", keep=2)
    assert just_written not in deleted and (tmp_path / just_written).exists()
    assert sorted(deleted) == sorted(future[:2])
    assert store.rotate("c", "Alice", keep=1, protect={future[2]}) == []


def test_latest_matches_exact_names_and_counts_tagged_saves(tmp_path: Path) -> None:
    store = SaveStore(tmp_path)
    save(store, "c", "Ann", T0)
    tagged = save(store, "c", "Ann", T0 + timedelta(minutes=1), tag="boss fight")
    save(store, "c", "Anna", T0 + timedelta(minutes=5))
    extension = "Forest_Party_20251117120000_character_Ann.bin"
    (tmp_path / extension).write_bytes(slot_bytes())
    latest = store.latest("c", "Ann")
    assert latest is not None and latest.filename == tagged
    found = store.latest("Forest Party", "Ann")
    assert found is not None and found.filename == extension
    assert store.latest("c", "An") is None and store.latest("nope", "Ann") is None


def test_rescan_notices_other_writers_and_rereads_only_changed_sidecars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = SaveStore(tmp_path)
    names = [
        save(writer, f"chat {i % 7}", f"char {i % 5}", T0 + timedelta(seconds=i))
        for i in range(300)
    ]
    reads: list[Path] = []
    real = SaveStore._load_meta

    def counting(self: SaveStore, path: Path) -> SaveMeta | None:
        reads.append(path)
        return real(self, path)

    monkeypatch.setattr(SaveStore, "_load_meta", counting)
    store = SaveStore(tmp_path)
    assert store.rescan() is True and len(store.entries()) == 300 and len(reads) == 300
    reads.clear()
    assert store.rescan() is False and reads == []
    sidecar = tmp_path / (names[0] + ".json")
    sidecar.write_text(SaveMeta(chat="chat 0", character="char 0", n_saved=42).model_dump_json())
    os.utime(sidecar, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    writer.delete(names[1])
    assert store.rescan() is True and reads == [sidecar]
    assert len(store.entries()) == 299
    assert next(e for e in store.entries() if e.filename == names[0]).meta is not None
    assert [e.timestamp for e in store.entries()] == sorted(
        (e.timestamp for e in store.entries()), reverse=True
    )


def test_a_missing_directory_is_empty(tmp_path: Path) -> None:
    store = SaveStore(tmp_path / "missing")
    assert store.entries() == [] and store.latest("c", "n") is None
    assert store.rotate("c", "n", keep=1) == []


@pytest.mark.parametrize(
    ("n_saved", "n_written", "kwargs", "valid"),
    [
        (0, 48, {}, False),  # an empty slot, whatever the size
        (0, 5_000_000, {}, False),
        (1, 48, {}, True),
        (9, 4864, {"min_tokens": 10}, False),
        (10, 4864, {"min_tokens": 10}, True),
        (0, 0, {"min_tokens": 0}, False),
        (500, 900_000, {"min_bytes": 1_048_576}, False),  # the seed's 1 MB rule, opt-in
        (500, 1_048_576, {"min_bytes": 1_048_576}, True),
    ],
)
def test_is_valid_save(n_saved: int, n_written: int, kwargs: dict[str, int], valid: bool) -> None:
    assert is_valid_save(n_saved, n_written, **kwargs) is valid


async def test_watch_sees_files_added_and_removed_by_others(tmp_path: Path) -> None:
    store = SaveStore(tmp_path)
    changed = asyncio.Event()
    stop = asyncio.Event()
    names = [format_save_name("Forest Party", who, T0) for who in ("Alice", "Bob")]

    async def until(condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not condition():
                await changed.wait()
                changed.clear()

    def listed() -> set[str]:
        return {e.filename for e in store.entries()}

    (tmp_path / names[0]).write_bytes(slot_bytes())
    task = asyncio.create_task(store.watch(changed.set, stop, debounce_ms=50))
    try:
        # The watch's first rescan reports the existing file; by the time this task runs again
        # the watcher is set up (no sleeps), so what follows is seen through watchfiles itself.
        async with asyncio.timeout(10):
            await changed.wait()
        changed.clear()
        assert listed() == {names[0]}
        (tmp_path / names[1]).write_bytes(slot_bytes())
        await until(lambda: listed() == set(names))
        (tmp_path / names[0]).unlink()
        await until(lambda: listed() == {names[1]})
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task
    assert task.done() and not task.cancelled()


async def test_watch_reports_own_writes_and_waits_for_a_missing_directory(tmp_path: Path) -> None:
    directory = tmp_path / "saves"
    store = SaveStore(directory)
    changed = asyncio.Event()
    stop = asyncio.Event()
    task = asyncio.create_task(store.watch(changed.set, stop, debounce_ms=50))
    try:
        await asyncio.sleep(0.3)  # the watcher finds no directory and waits for one
        directory.mkdir()
        name = format_save_name("c", "Alice", T0)
        (directory / name).write_bytes(slot_bytes())
        async with asyncio.timeout(10):
            await changed.wait()
        changed.clear()
        assert [e.filename for e in store.entries()] == [name]
        store.write_meta(name, SaveMeta(chat="c", character="Alice", n_saved=3, model="m"))
        async with asyncio.timeout(10):
            await changed.wait()
        assert [e.meta.model if e.meta else None for e in store.entries()] == ["m"]
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task
