"""Files of the SillyTavern KV Cache Manager extension: its collapsed names mapped back to chats.

The names are made here exactly as the extension makes them (``utils/utils.js``:
``replace(/[^a-zA-Z0-9_-]/g, '_')`` over UTF-16, local-time stamps), from real SillyTavern ids.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama import LlamaClient
from kvtui.sillytavern import SillyTavernData
from kvtui.sillytavern.sample import build_sample
from kvtui.store import (
    KnownChats,
    Match,
    Resolution,
    SaveMeta,
    SaveStore,
    extension_normalize,
    group_saves,
    parse_save_name,
    resolve_extension_names,
)
from kvtui.store.extension import known_chats_from
from tests.slotfiles import slot_bytes

ONE_TO_ONE = "Серафина - 2026-05-03@18h45m46s123ms"
GROUP_CHAT = "2026-05-03@19h02m11s004ms"
MAIL_CHAT = "Mira - user@example.org"
CHATS = [
    (ONE_TO_ONE, "Серафина"),
    (GROUP_CHAT, "Forest Party"),
    (MAIL_CHAT, "Mira"),
]
MEMBERS = {
    ONE_TO_ONE: ["Серафина"],
    GROUP_CHAT: ["Mira", "Kael", "Lily 🌸", "Валентин", "Серафина"],
    MAIL_CHAT: ["Mira"],
}


@pytest.fixture
def yekaterinburg(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The extension author's time zone (UTC+5), so local and UTC stamps differ."""
    monkeypatch.setenv("TZ", "Asia/Yekaterinburg")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def ext_name(chat: str, stamp: str, character: str, tag: str | None = None) -> str:
    """``generateSaveFilename`` of the extension (the character name arrives normalised)."""
    chat_part = extension_normalize(chat, "unknown")
    character_part = extension_normalize(character)
    if tag:
        return f"{chat_part}_{stamp}_tag_{extension_normalize(tag)}_character_{character_part}.bin"
    return f"{chat_part}_{stamp}_character_{character_part}.bin"


def resolve(name: str) -> Resolution:
    parsed = parse_save_name(name)
    assert parsed is not None
    return resolve_extension_names(parsed, CHATS, MEMBERS)


def test_the_extension_normalisation_is_utf16_and_ascii_only() -> None:
    assert extension_normalize(ONE_TO_ONE) == "_________-_2026-05-03_18h45m46s123ms"
    assert extension_normalize("Lily 🌸") == "Lily___"  # the emoji is two UTF-16 code units
    assert extension_normalize("user@example.org") == "user_example_org"
    assert extension_normalize("") == "" and extension_normalize(None, "unknown") == "unknown"


def test_a_one_to_one_chat_with_a_cyrillic_name_resolves() -> None:
    result = resolve(ext_name(ONE_TO_ONE, "20260503184600", "Серафина"))
    parsed = parse_save_name(ext_name(ONE_TO_ONE, "20260503184600", "Серафина"))
    assert parsed is not None
    assert result == resolve_extension_names(parsed, KnownChats.build(CHATS, MEMBERS))
    assert result.status is Match.EXACT
    assert (result.chat, result.character) == (ONE_TO_ONE, "Серафина")


def test_group_members_resolve_and_collisions_are_ambiguous_never_guessed() -> None:
    kael = resolve(ext_name(GROUP_CHAT, "20260503190211", "Kael", tag="важный момент"))
    assert (kael.chat, kael.character) == (GROUP_CHAT, "Kael")
    lily = resolve(ext_name(GROUP_CHAT, "20260503190211", "Lily 🌸"))
    assert lily.character == "Lily 🌸"
    # "Валентин" and "Серафина" both collapse to eight underscores in the same group.
    both = resolve(ext_name(GROUP_CHAT, "20260503190211", "Валентин"))
    assert both.status is Match.AMBIGUOUS
    assert both.character is None
    assert set(both.character_candidates) == {"Валентин", "Серафина"}
    assert "ambiguous" in both.describe()


def test_two_chats_that_collapse_alike_are_ambiguous() -> None:
    chats = [("Mira - a@b", "Mira"), ("Mira - a_b", "Mira")]
    members = {chat: ["Mira"] for chat, _ in chats}
    parsed = parse_save_name(ext_name("Mira - a@b", "20260503190211", "Mira"))
    assert parsed is not None
    result = resolve_extension_names(parsed, chats, members)
    assert result.status is Match.AMBIGUOUS and result.chat is None
    assert result.chat_candidates == ("Mira - a@b", "Mira - a_b")


def test_old_slot_forms_resolve_chat_tag_and_a_single_member() -> None:
    chat = extension_normalize(ONE_TO_ONE)
    autosave = resolve(f"{chat}_20251107120000_slot2.bin")
    assert (autosave.chat, autosave.character) == (ONE_TO_ONE, "Серафина")
    named = resolve(f"{chat}_20251107120000_named_before_the_storm_slot0.bin")
    assert named.tag == "before_the_storm"
    typed = resolve(f"my_save_{chat}_20251107120000_slot1.bin")  # {tag}_{chat}_{ts}_slot{N}
    assert (typed.chat, typed.tag) == (ONE_TO_ONE, "my_save")
    group = resolve(f"{extension_normalize(GROUP_CHAT)}_slot1_20251106120000.bin")
    assert group.chat == GROUP_CHAT and group.character is None
    assert resolve("Someone_else_20251107120000_slot1.bin").status is Match.UNKNOWN


@pytest.mark.server
async def test_the_store_lists_extension_saves_under_real_chats_in_local_time(
    clean_server: EmbeddedServer, yekaterinburg: None
) -> None:
    save_dir = clean_server.save_dir
    assert save_dir is not None
    stamp = "20260503190211"  # 19:02:11 in UTC+5 is 14:02:11 UTC
    names = {
        "kael": ext_name(GROUP_CHAT, stamp, "Kael"),
        "seraphina": ext_name(ONE_TO_ONE, stamp, "Серафина"),
        "mail": ext_name(MAIL_CHAT, stamp, "Mira"),
        "ambiguous": ext_name(GROUP_CHAT, stamp, "Валентин"),
        "slot": f"{extension_normalize(ONE_TO_ONE)}_20260503190500_slot1.bin",
    }
    async with LlamaClient(clean_server.url, save_dir=save_dir) as client:
        await client.completion(list(range(65, 95)), n_predict=1, id_slot=0)
        for name in names.values():
            await client.save(0, name)  # written by the server, as the extension has it do
        store = SaveStore(save_dir)
        # kvtui's own save of Kael in the same chat, one minute before (UTC).
        own = store.new_filename(GROUP_CHAT, "Kael", when=datetime(2026, 5, 3, 14, 1, tzinfo=UTC))
        await store.save_verified(client, 0, own, SaveMeta(chat=GROUP_CHAT, character="Kael"))

    before = {e.filename: e for e in store.entries()}
    assert before[names["kael"]].chat == "2026-05-03_19h02m11s004ms"  # collapsed, unknown chats
    store.set_known_chats(CHATS, MEMBERS)
    entries = {e.filename: e for e in store.entries()}
    kael = entries[names["kael"]]
    assert (kael.chat, kael.character) == (GROUP_CHAT, "Kael") and kael.from_extension
    assert kael.timestamp == datetime(2026, 5, 3, 14, 2, 11, tzinfo=UTC)
    assert (entries[names["seraphina"]].chat, entries[names["seraphina"]].character) == (
        ONE_TO_ONE,
        "Серафина",
    )
    assert entries[names["mail"]].chat == MAIL_CHAT
    slot = entries[names["slot"]]
    assert (slot.chat, slot.character, slot.legacy) == (ONE_TO_ONE, "Серафина", True)
    ambiguous = entries[names["ambiguous"]]
    assert ambiguous.resolution is not None and ambiguous.resolution.status is Match.AMBIGUOUS
    assert ambiguous.chat == GROUP_CHAT and ambiguous.character == "________"

    latest = store.latest(GROUP_CHAT, "Kael")
    assert latest is not None and latest.filename == names["kael"]  # 14:02 UTC beats 14:01
    picked = store.latest(ONE_TO_ONE, "Серафина")
    assert picked is not None and picked.filename == names["slot"]
    [group] = [g for g in group_saves(store.entries(), GROUP_CHAT) if g.is_current]
    kael_saves = next(c for c in group.characters if c.character == "Kael")
    assert [s.filename for s in kael_saves.saves] == [names["kael"], own]
    store.set_known_chats(None)
    assert store.get(names["kael"]) is not None
    assert {e.filename: e for e in store.entries()}[names["kael"]].resolution is None


def test_kvtui_names_keep_unicode(tmp_path: Path) -> None:
    store = SaveStore(tmp_path)
    name = store.new_filename(GROUP_CHAT, "Серафина", tag="важный момент")
    assert "важный_момент" in name and "@" in name and "Серафина" in name


def test_known_chats_come_from_a_sillytavern_data_directory(tmp_path: Path) -> None:
    data = SillyTavernData(build_sample(tmp_path / "st"))
    known = known_chats_from(data)
    store = SaveStore(tmp_path / "saves")
    store.directory.mkdir()
    group = next(ref for ref in data.chats() if ref.is_group)
    members = [m.name for m in data.members(group)]
    name = ext_name(group.chat_id, "20260503190211", members[1])
    (store.directory / name).write_bytes(slot_bytes(3))
    store.set_known_chats(known)
    [entry] = store.entries()
    assert (entry.chat, entry.character) == (group.chat_id, members[1])
    assert [c.chat for c in group_saves(store.entries(), group.chat_id) if c.is_current] == [
        group.chat_id
    ]
