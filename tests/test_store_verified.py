"""Verified saves, checks before restore, rotation and repair, against the real embedded server.

Files are written by llama-server itself (the session server of ``tests/conftest.py``); damaged
ones are made from them by truncating or overwriting, as a crash or a user would.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.fingerprint import PromptFingerprint
from kvtui.llama import LlamaClient, SaveFileMissing
from kvtui.store import (
    NotRestorable,
    SaveIncomplete,
    SaveMeta,
    SaveRefused,
    SaveStore,
    SaveWriteFailed,
    private_name,
)
from kvtui.store.saving import meta_from_name
from kvtui.store.slotfile import read_header

pytestmark = pytest.mark.server

T0 = datetime(2026, 5, 3, 12, 0, 0, tzinfo=UTC)


def tokens(n: int, start: int = 65) -> list[int]:
    return [32 + (start - 32 + i) % 95 for i in range(n)]


@pytest.fixture
async def client(clean_server: EmbeddedServer) -> AsyncIterator[LlamaClient]:
    async with LlamaClient(clean_server.url, save_dir=clean_server.save_dir) as llama:
        yield llama


async def fill(client: LlamaClient, slot: int, n: int, start: int = 65) -> None:
    await client.completion(tokens(n, start), n_predict=1, id_slot=slot)


async def save(
    store: SaveStore,
    client: LlamaClient,
    slot: int,
    chat: str,
    character: str,
    when: datetime,
    tag: str | None = None,
) -> str:
    name = store.new_filename(chat, character, tag=tag, when=when)
    meta = SaveMeta(chat=chat, character=character, tag=tag, slot=slot, saved_at=when)
    entry = await store.save_verified(client, slot, name, meta)
    return entry.filename


def cut(path: Path, size: int) -> None:
    os.truncate(path, size)


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def test_a_verified_save_is_complete_private_and_restorable(
    client: LlamaClient, save_dir: Path
) -> None:
    store = SaveStore(save_dir)
    await fill(client, 0, 60)
    name = store.new_filename("Forest Party", "Серафина", when=T0)
    meta = SaveMeta(chat="Forest Party", character="Серафина", slot=0, model="tiny")
    entry = await store.save_verified(client, 0, name, meta)
    path = save_dir / name
    assert listing(save_dir) == [name, name + ".json"]  # no private file left
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((save_dir / (name + ".json")).stat().st_mode) == 0o600
    assert entry.verified and entry.meta is not None
    assert entry.meta.n_written == path.stat().st_size == entry.size
    assert entry.n_saved == entry.n_tokens == read_header(path).n_tokens == 60
    assert (entry.chat, entry.character) == ("Forest Party", "Серафина")
    assert store.check_restorable(entry, n_ctx=1024).filename == name
    await client.erase(0)
    restored = await client.restore(0, name)
    assert restored.n_restored == 60 and restored.n_read == entry.size


async def test_a_save_never_overwrites_an_existing_name(
    client: LlamaClient, save_dir: Path
) -> None:
    store = SaveStore(save_dir)
    await fill(client, 0, 30)
    tagged = await save(store, client, 0, "c", "Alice", T0, tag="важный момент")
    before = (save_dir / tagged).read_bytes()
    await fill(client, 1, 80, start=90)
    with pytest.raises(SaveRefused, match="never overwrites"):
        await store.save_verified(client, 1, tagged, SaveMeta(chat="c", character="Alice"))
    assert (save_dir / tagged).read_bytes() == before
    assert listing(save_dir) == [tagged, tagged + ".json"]


@pytest.mark.parametrize(("n_tokens", "min_tokens"), [(0, 1), (5, 10)])
async def test_an_empty_or_small_save_is_discarded_without_a_trace(
    client: LlamaClient, save_dir: Path, n_tokens: int, min_tokens: int
) -> None:
    store = SaveStore(save_dir)
    await fill(client, 2, 40)
    good = await save(store, client, 2, "c", "Bob", T0)
    if n_tokens:
        await fill(client, 1, n_tokens)
    name = store.new_filename("c", "Bob", when=T0 + timedelta(minutes=1))
    with pytest.raises(SaveIncomplete, match="discarded"):
        await store.save_verified(
            client, 1, name, SaveMeta(chat="c", character="Bob"), min_tokens=min_tokens
        )
    assert listing(save_dir) == [good, good + ".json"]
    assert [e.filename for e in store.entries()] == [good]


async def test_a_full_disk_during_the_sidecar_write_loses_nothing(
    client: LlamaClient, save_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SaveStore(save_dir)
    await fill(client, 0, 50)
    good = await save(store, client, 0, "c", "Eve", T0)
    good_bytes = (save_dir / good).read_bytes()

    def full(*_args: object, **_kwargs: object) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("kvtui.store.store.write_atomic", full)
    await fill(client, 0, 90, start=70)
    name = store.new_filename("c", "Eve", when=T0 + timedelta(minutes=1))
    with pytest.raises(SaveWriteFailed) as caught:
        await store.save_verified(client, 0, name, SaveMeta(chat="c", character="Eve"))
    message = str(caught.value)
    assert "\n" not in message and "No space left" in message and "Free some disk" in message
    assert listing(save_dir) == [good, good + ".json"]
    assert (save_dir / good).read_bytes() == good_bytes
    latest = store.latest("c", "Eve")
    assert latest is not None and latest.filename == good


async def test_damaged_newest_saves_never_win_and_are_refused_before_the_server(
    client: LlamaClient, save_dir: Path
) -> None:
    store = SaveStore(save_dir)
    await fill(client, 0, 70)
    good = await save(store, client, 0, "c", "Mira", T0)
    names = [await save(store, client, 0, "c", "Mira", T0 + timedelta(minutes=m)) for m in (1, 2)]
    truncated, garbage = names
    cut(save_dir / truncated, (save_dir / truncated).stat().st_size // 3)  # a killed writer's
    size = (save_dir / garbage).stat().st_size  # garbage of the right size: only the header tells
    (save_dir / garbage).write_bytes((b"not a slot file at all" * size)[:size])
    # A sidecar-less zero-byte file and a symlink to a good save, both newer still.
    zero = store.new_filename("c", "Mira", when=T0 + timedelta(minutes=3))
    (save_dir / zero).write_bytes(b"")
    link = store.new_filename("c", "Mira", when=T0 + timedelta(minutes=4))
    (save_dir / link).symlink_to(save_dir / good)
    try:
        await _check_damaged(store, client, good, truncated, garbage, zero, link)
    finally:
        (save_dir / link).unlink()  # the shared fixture's reset leaves dangling symlinks


async def _check_damaged(
    store: SaveStore,
    client: LlamaClient,
    good: str,
    truncated: str,
    garbage: str,
    zero: str,
    link: str,
) -> None:
    latest = store.latest("c", "Mira")
    assert latest is not None and latest.filename == good
    assert [e.filename for e in store.entries()] == [good]
    assert {e.filename for e in store.damaged()} == {truncated, garbage, zero}
    for name, reason in ((truncated, "cut short"), (garbage, "wrong magic"), (zero, "empty")):
        with pytest.raises(NotRestorable, match=reason):
            store.check_restorable(name, n_ctx=1024)
    with pytest.raises(NotRestorable, match="symbolic link"):
        store.check_restorable(link)
    with pytest.raises(SaveFileMissing):  # the client refuses the symlink too
        await client.restore(1, link)
    with pytest.raises(NotRestorable, match="more than a slot's context of 50"):
        store.check_restorable(good, n_ctx=50)
    assert store.latest("c", "Mira", n_ctx=50) is None

    # The slot keeps its cache: nothing was sent.
    slots = await client.slots()
    assert slots[0].n_prompt_tokens == 70


async def test_sidecar_less_files_are_checked_by_their_header(
    client: LlamaClient, save_dir: Path
) -> None:
    await fill(client, 3, 40)
    name = "Seraphina_-_2026-05-03_18h45m46s123ms_20260503184600_character_Seraphina.bin"
    result = await client.save(3, name)  # the extension's way: a final name, no sidecar
    store = SaveStore(save_dir)
    [entry] = store.entries()
    assert entry.meta is None and entry.n_tokens == 40 == result.n_saved
    store.check_restorable(entry, n_ctx=1024)
    with pytest.raises(NotRestorable, match="40 tokens, more than a slot's context of 39"):
        store.check_restorable(entry, n_ctx=39)
    cut(save_dir / name, entry.size - 1)  # one byte short: the KV walk tells
    with pytest.raises(NotRestorable, match="KV data ends before"):
        store.check_restorable(name)
    cut(save_dir / name, 40)  # cut inside its token list
    with pytest.raises(NotRestorable, match="cut short"):
        store.check_restorable(name)
    assert store.entries() == []


async def test_rotation_counts_only_sound_saves(client: LlamaClient, save_dir: Path) -> None:
    store = SaveStore(save_dir)
    await fill(client, 0, 30)
    good = [await save(store, client, 0, "c", "Ann", T0 + timedelta(minutes=m)) for m in range(3)]
    # Two leftovers under valid names, newer than every good save (the pre-fix failure).
    for m, data in ((10, b""), (11, b"\x71\x73\x67\x67" + bytes(4))):
        (save_dir / store.new_filename("c", "Ann", when=T0 + timedelta(minutes=m))).write_bytes(
            data
        )
    assert store.rotate("c", "Ann", keep=3) == []
    assert all((save_dir / name).exists() for name in good)
    newest = await save(store, client, 0, "c", "Ann", T0 + timedelta(minutes=20))
    assert store.rotate("c", "Ann", keep=3) == [good[0]]
    assert [e.filename for e in store.entries()] == [newest, good[2], good[1]]


async def test_repair_cleans_leftovers_adopts_and_reports_once(
    client: LlamaClient, save_dir: Path
) -> None:
    store = SaveStore(save_dir)
    await fill(client, 0, 25)
    kept = await save(store, client, 0, "c", "Lea", T0)
    # kvtui killed after the server wrote its private file: a leftover and its final sidecar.
    leftover = private_name("saving")
    await client.save(0, leftover)
    orphan = store.new_filename("c", "Lea", when=T0 + timedelta(minutes=1))
    store.write_meta(orphan, SaveMeta(chat="c", character="Lea"))
    probe = private_name("probe")
    await client.save(1, probe)
    (save_dir / ".Lea.bin.json.abc123.tmp").write_text("{")
    # An old kvtui save that lost its sidecar (Unicode name: only kvtui writes those).
    lost = store.new_filename("Лесная поляна", "Серафина", when=T0 + timedelta(minutes=2))
    await client.save(0, lost)
    damaged = store.new_filename("c", "Lea", when=T0 + timedelta(minutes=3))
    (save_dir / damaged).write_bytes(b"")

    notes = SaveStore(save_dir).repair()
    text = "\n".join(notes)
    assert "Removed 3 incomplete file(s)" in text
    assert f"Removed {orphan}.json" in text
    assert f"Adopted {lost} (25 tokens)" in text
    assert f"{damaged} cannot be loaded (it is empty (0 bytes))" in text
    assert listing(save_dir) == sorted([kept, kept + ".json", lost, lost + ".json", damaged])
    sidecar = json.loads((save_dir / (lost + ".json")).read_text())
    assert (sidecar["chat"], sidecar["character"], sidecar["adopted"]) == (
        "Лесная поляна",
        "Серафина",
        True,
    )
    assert sidecar["n_written"] == (save_dir / lost).stat().st_size
    again = SaveStore(save_dir)
    [entry] = [e for e in again.entries() if e.filename == lost]
    assert entry.verified and entry.chat == "Лесная поляна"
    store.repair()
    assert store.repair() == []  # each thing is reported once


async def test_autoload_picks_the_newest_sound_matching_save_and_says_what_it_passed_over(
    client: LlamaClient, save_dir: Path
) -> None:
    store = SaveStore(save_dir)
    story = "Mira: the forest is quiet tonight. " * 40
    await fill(client, 0, 40)
    older = store.new_filename("c", "Mira", when=T0)
    meta = SaveMeta(chat="c", character="Mira", fingerprint=PromptFingerprint.of(story))
    await store.save_verified(client, 0, older, meta)
    other = store.new_filename("c", "Mira", when=T0 + timedelta(minutes=1))
    alien = PromptFingerprint.of("Kael: a different conversation entirely. " * 40)
    await store.save_verified(client, 0, other, meta.model_copy(update={"fingerprint": alien}))
    broken = await save(store, client, 0, "c", "Mira", T0 + timedelta(minutes=2))
    cut(save_dir / broken, 100)

    entry, notes = store.pick_restorable("c", "Mira", n_ctx=1024, prompt_text=story + " more")
    assert entry is not None and entry.filename == older
    assert len(notes) == 2 and broken in notes[0] and "cut short" in notes[0]
    assert other in notes[1] and "different conversation" in notes[1]
    entry, notes = store.pick_restorable("c", "Mira", n_ctx=1024)
    assert entry is not None and entry.filename == other and len(notes) == 1
    entry, notes = store.pick_restorable("c", "Mira", n_ctx=10)
    assert entry is None and len(notes) == 3
    assert all("more than a slot's context of 10" in n for n in notes[1:])


async def test_an_unchanged_cache_is_not_saved_twice(client: LlamaClient, save_dir: Path) -> None:
    store = SaveStore(save_dir)
    await fill(client, 0, 45)
    first = await save(store, client, 0, "c", "Ida", T0)
    again = store.new_filename("c", "Ida", when=T0 + timedelta(minutes=1))
    meta = SaveMeta(chat="c", character="Ida")
    entry = await store.save_verified(client, 0, again, meta, unless_same_as=first)
    assert entry.filename == first and listing(save_dir) == [first, first + ".json"]
    await fill(client, 0, 60)  # the cache moved on: a real new save
    entry = await store.save_verified(client, 0, again, meta, unless_same_as=first)
    assert entry.filename == again and entry.n_saved == 60


@pytest.mark.parametrize(
    "name", ["persist.bin", "Forest_Party~abcd2345_20260503120000_character_Mira.bin"]
)
async def test_a_client_named_save_is_verified_and_never_overwritten(
    client: LlamaClient, save_dir: Path, name: str
) -> None:
    store = SaveStore(save_dir)
    await fill(client, 0, 33)
    entry = await store.save_verified(client, 0, name, meta_from_name(name))
    assert entry.verified and entry.n_saved == 33 and listing(save_dir) == [name, name + ".json"]
    with pytest.raises(SaveRefused):
        await store.save_verified(client, 1, name, meta_from_name(name))
    cut(save_dir / name, entry.size - 10)
    with pytest.raises(NotRestorable, match="cut short"):
        store.check_restorable(name)
