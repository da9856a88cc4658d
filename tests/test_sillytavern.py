"""SillyTavern data directory: cards, chat files, groups, active chat, prompt, sample data."""

from __future__ import annotations

import base64
import json
import logging
import os
import struct
import subprocess
import sys
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from kvtui.sillytavern import (
    Card,
    CardError,
    ChatRef,
    Message,
    SillyTavernData,
    SillyTavernError,
    assemble_prompt,
    build_card_json,
    build_sample,
    copy_sample,
    parse_chat_text,
    parse_send_date,
    read_card,
    write_card_png,
)
from kvtui.sillytavern import sample as sample_mod
from kvtui.sillytavern.cards import encode_card_text
from kvtui.sillytavern.png import PNG_SIGNATURE, encode_png, iter_text_chunks

PIXEL = [b"\x10\x20\x30"]


def jsonl(*lines: dict[str, Any]) -> str:
    return "\n".join(json.dumps(line) for line in lines)


def atomic_write(path: Path, text: str, mtime: float) -> None:
    """What write-file-atomic does: a temp file next to the target, then a rename onto it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".3184291377")
    temp.write_text(text, encoding="utf-8")
    os.utime(temp, (mtime, mtime))
    os.replace(temp, path)


def user(mes: str) -> dict[str, Any]:
    return {"name": "Alex", "is_user": True, "is_system": False, "mes": mes}


def bot(name: str, mes: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "is_user": False, "mes": mes, "swipes": [mes], "swipe_id": 0, **extra}


HEADER = {"chat_metadata": {"integrity": "abc"}, "user_name": "unused", "character_name": "unused"}


@pytest.fixture
def sample_dir(tmp_path: Path) -> Path:
    return build_sample(tmp_path / "default-user")


@pytest.fixture
def st(sample_dir: Path) -> SillyTavernData:
    return SillyTavernData(sample_dir)


# -- PNG cards -----------------------------------------------------------------------------


def test_card_png_with_both_chunks_reads_ccv3(tmp_path: Path) -> None:
    path = tmp_path / "Seraphina.png"
    card_json = build_card_json(
        "Seraphina",
        description="A guardian.",
        personality="kind",
        scenario="A glade.",
        first_mes="Hello.",
        mes_example="<START>\n{{user}}: Hi",
        system_prompt="Stay in character.",
        chat="Seraphina - 2026-05-03@18h45m46s123ms",
        world="Eldoria",
        alternate_greetings=["Hi again."],
    )
    write_card_png(path, card_json)
    card = read_card(path)
    assert card == Card(
        name="Seraphina",
        avatar="Seraphina.png",
        description="A guardian.",
        personality="kind",
        scenario="A glade.",
        first_mes="Hello.",
        mes_example="<START>\n{{user}}: Hi",
        system_prompt="Stay in character.",
        chat="Seraphina - 2026-05-03@18h45m46s123ms",
        world="Eldoria",
        alternate_greetings=("Hi again.",),
        spec="chara_card_v3",
    )


def test_written_png_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "Kael.png"
    write_card_png(path, build_card_json("Kael"), size=8)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    pos, kinds, pixels = 8, [], b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        kinds.append(kind)
        if kind == b"IDAT":
            pixels += body
        pos += 12 + length
    assert kinds == [b"IHDR", b"IDAT", b"tEXt", b"tEXt", b"IEND"]  # chara, ccv3 before IEND
    assert len(zlib.decompress(pixels)) == 8 * (1 + 8 * 3)


def test_card_with_only_chara(tmp_path: Path) -> None:
    path = tmp_path / "Old.png"
    write_card_png(path, build_card_json("Old Timer", description="d"), ccv3=False)
    card = read_card(path)
    assert (card.name, card.description, card.spec) == ("Old Timer", "d", "chara_card_v2")


def test_ccv3_preferred_and_damaged_ccv3_falls_back(tmp_path: Path) -> None:
    v2 = encode_card_text(build_card_json("From Chara"))
    v3 = encode_card_text({**build_card_json("From V3"), "spec": "chara_card_v3"})
    # ccv3 written after chara still wins
    path = tmp_path / "a.png"
    path.write_bytes(encode_png(PIXEL, 1, [("chara", v2), ("ccv3", v3)]))
    assert read_card(path).name == "From V3"
    path.write_bytes(encode_png(PIXEL, 1, [("ccv3", "!!not base64 json!!"), ("chara", v2)]))
    assert read_card(path).name == "From Chara"


def test_v1_card_and_name_fallback(tmp_path: Path) -> None:
    v1 = {"name": "Plain", "description": "top level", "first_mes": "Yo", "chat": "c1"}
    path = tmp_path / "Plain.png"
    path.write_bytes(encode_png(PIXEL, 1, [("chara", encode_card_text(v1))]))
    card = read_card(path)
    assert (card.name, card.description, card.first_mes, card.chat) == (
        "Plain",
        "top level",
        "Yo",
        "c1",
    )
    nameless = tmp_path / "Nameless.png"
    nameless.write_bytes(encode_png(PIXEL, 1, [("chara", encode_card_text({"data": {}}))]))
    assert read_card(nameless).name == "Nameless"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@pytest.mark.parametrize("kind", [b"zTXt", b"iTXt", b"iTXt-compressed"])
def test_compressed_and_international_text_chunks(tmp_path: Path, kind: bytes) -> None:
    text = encode_card_text(build_card_json("Zed")).encode()
    if kind == b"zTXt":
        chunk = _chunk(kind, b"chara\0\0" + zlib.compress(text))
    elif kind == b"iTXt":
        chunk = _chunk(kind, b"chara\0\0\0en\0\0" + text)
    else:
        chunk = _chunk(b"iTXt", b"chara\0\1\0\0\0" + zlib.compress(text))
    png = encode_png(PIXEL, 1)
    path = tmp_path / "Zed.png"
    path.write_bytes(png[:-12] + chunk + png[-12:])
    assert read_card(path).name == "Zed"


def test_not_a_card(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"GIF89a not a png")
    with pytest.raises(CardError):
        read_card(bad)
    plain = tmp_path / "plain.png"
    plain.write_bytes(encode_png(PIXEL, 1))
    with pytest.raises(CardError, match="no chara"):
        read_card(plain)
    truncated = tmp_path / "cut.png"
    full = encode_png(PIXEL, 1, [("chara", encode_card_text(build_card_json("X")))])
    truncated.write_bytes(full[:60])
    with pytest.raises(CardError):
        read_card(truncated)


# -- chat files ----------------------------------------------------------------------------

REF = ChatRef("c", Path("c.jsonl"), None, "Seraphina.png", "Seraphina")


def test_current_header_format() -> None:
    chat = parse_chat_text(jsonl(HEADER, bot("Seraphina", "Hi."), user("Hello")), REF)
    assert chat.has_header and chat.integrity == "abc" and chat.user_name is None
    assert [m.name for m in chat.messages] == ["Seraphina", "Alex"]


def test_old_header_format() -> None:
    old = {
        "user_name": "User",
        "character_name": "Seraphina",
        "create_date": "2024-09-28@01h02m36s",
        "chat_metadata": {"note_prompt": "", "world_info": "Eldoria"},
    }
    chat = parse_chat_text(jsonl(old, user("hi")), REF)
    assert chat.has_header and chat.user_name == "User"
    assert chat.metadata["world_info"] == "Eldoria" and len(chat.messages) == 1
    # user_name without mes (and no chat_metadata) is still a header
    chat = parse_chat_text(jsonl({"user_name": "U", "character_name": "S"}, user("x")), REF)
    assert chat.has_header and chat.user_name == "U"


def test_old_group_chat_without_header() -> None:
    first = bot("Kael", "Line zero is a message.", original_avatar="Kael.png")
    chat = parse_chat_text(jsonl(first, user("ok")), REF, fallback_metadata={"tainted": True})
    assert not chat.has_header
    assert chat.messages[0].mes == "Line zero is a message."
    assert chat.messages[0].original_avatar == "Kael.png"
    assert chat.metadata == {"tainted": True}
    # A first line with user_name *and* mes is a message, not a header
    chat = parse_chat_text(jsonl({"user_name": "x", "name": "A", "mes": "m"}), REF)
    assert not chat.has_header and chat.messages[0].mes == "m"


def test_message_fields_and_hidden_messages() -> None:
    text = jsonl(
        HEADER,
        bot("Seraphina", "b", swipes=["a", "b"], swipe_id=1, extra={"gen_id": 7}),
        {"name": "Alex", "is_user": True, "is_system": True, "mes": "hidden"},
        {"name": "System", "is_user": False, "mes": "narr", "extra": {"type": "narrator"}},
        {"name": 5, "mes": None, "swipe_id": "x", "swipes": "nope"},
    )
    chat = parse_chat_text(text + "\r\n", REF)  # a trailing CRLF is tolerated
    first, hidden, narrator, odd = chat.messages
    assert (first.swipes, first.swipe_id, first.gen_id) == (("a", "b"), 1, 7)
    assert hidden.is_system and hidden.is_user
    assert narrator.is_narrator and not first.is_narrator
    assert (odd.name, odd.mes, odd.swipe_id, odd.swipes) == ("5", "", None, ())
    assert [m.mes for m in chat.visible_messages] == ["b", "narr", ""]


def test_malformed_lines_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    text = "\n".join([json.dumps(HEADER), "{not json", "[1, 2]", "", json.dumps(user("fine"))])
    with caplog.at_level(logging.WARNING):
        chat = parse_chat_text(text, REF)
    assert chat.has_header and chat.skipped_lines == 2
    assert [m.mes for m in chat.messages] == ["fine"]
    assert "line 2 skipped" in caplog.text and "line 3 skipped" in caplog.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-05-03T15:46:10.512Z", datetime(2026, 5, 3, 15, 46, 10, 512000, tzinfo=UTC)),
        (1777823170512, datetime(2026, 5, 3, 15, 46, 10, 512000, tzinfo=UTC)),
        ("1777823170512", datetime(2026, 5, 3, 15, 46, 10, 512000, tzinfo=UTC)),
        (1777823170, datetime(2026, 5, 3, 15, 46, 10, tzinfo=UTC)),
    ],
)
def test_send_date_aware_formats(value: object, expected: datetime) -> None:
    assert parse_send_date(value) == expected


@pytest.mark.parametrize(
    ("value", "naive"),
    [
        ("September 28, 2024 1:02am", datetime(2024, 9, 28, 1, 2)),
        ("September 28, 2024 1:02pm", datetime(2024, 9, 28, 13, 2)),
        ("2024-09-28@01h02m36s", datetime(2024, 9, 28, 1, 2, 36)),
        ("2026-05-03@18h45m46s123ms", datetime(2026, 5, 3, 18, 45, 46, 123000)),
    ],
)
def test_send_date_local_formats(value: str, naive: datetime) -> None:
    assert parse_send_date(value) == naive.astimezone(UTC)


@pytest.mark.parametrize("value", [None, "", "yesterday", True, {"a": 1}, "2024-13-45@99h"])
def test_send_date_unreadable(value: object) -> None:
    assert parse_send_date(value) is None


# -- the data directory --------------------------------------------------------------------


def test_sample_characters_groups_members(st: SillyTavernData) -> None:
    assert [c.name for c in st.characters()] == ["Brann", "Kael", "Mira", "Seraphina"]
    seraphina = st.card("Seraphina.png")
    assert seraphina is not None and seraphina.chat == sample_mod.SOLO_CHAT_ID
    assert st.card("../settings.json") is None and st.card("Nobody.png") is None
    (group,) = st.groups()
    assert (group.id, group.name, group.chat_id) == (
        sample_mod.GROUP_ID,
        "Forest Party",
        sample_mod.GROUP_CHAT_ID,
    )
    assert group.is_muted("Brann.png") and not group.is_muted("Kael.png")
    ref = st.find_chat(sample_mod.GROUP_CHAT_ID)
    assert ref is not None and ref.is_group and ref.display_name == "Forest Party"
    assert [(m.name, m.avatar, m.muted) for m in st.members(ref)] == [
        ("Seraphina", "Seraphina.png", False),
        ("Kael", "Kael.png", False),
        ("Mira", "Mira.png", False),
        ("Brann", "Brann.png", True),
    ]
    solo = st.find_chat(sample_mod.SOLO_CHAT_ID)
    assert solo is not None and not solo.is_group
    assert st.members(solo) == [st.members(ref)[0]]
    assert st.user_name() == "Alex"


def test_sample_chats_and_active(st: SillyTavernData) -> None:
    chats = st.chats()
    assert [c.chat_id for c in chats] == [sample_mod.GROUP_CHAT_ID, sample_mod.SOLO_CHAT_ID]
    assert st.active_chat() == chats[0]
    group_chat = st.read_chat(chats[0])
    assert group_chat.has_header and len(group_chat.messages) == 6
    speakers = {m.original_avatar for m in group_chat.messages if not m.is_user}
    assert speakers == {"Seraphina.png", "Kael.png", "Mira.png"}  # Brann is muted
    solo = st.read_chat(chats[1])
    assert solo.has_header and len(solo.messages) == 6 and solo.skipped_lines == 0
    assert solo.messages[0].swipes[1].startswith("*Soft light")


def test_active_chat_follows_atomic_renames(tmp_path: Path) -> None:
    st = SillyTavernData(tmp_path)
    assert st.active_chat() is None and st.chats() == []
    a = tmp_path / "chats" / "Seraphina" / "Seraphina - A.jsonl"
    b = tmp_path / "chats" / "Kael" / "Kael - B.jsonl"
    base = time.time() - 1000
    atomic_write(a, jsonl(HEADER, user("1")), base)
    atomic_write(b, jsonl(HEADER, user("2")), base + 10)
    active = st.active_chat()
    assert active is not None and active.chat_id == "Kael - B" and active.avatar == "Kael.png"
    assert active.display_name == "Kael"  # no card: the folder name
    atomic_write(a, jsonl(HEADER, user("1"), user("3")), base + 20)
    active = st.active_chat()
    assert active is not None and active.path == a and active.mtime == pytest.approx(base + 20)
    # Leftover temp files, backups and hidden files are never chats, however new.
    (a.parent / "Seraphina - A.jsonl.9f8e7d").write_text("{}")
    (tmp_path / "backups").mkdir()
    (tmp_path / "backups" / "chat_kael_20260503-184546.jsonl").write_text("{}")
    (b.parent / ".hidden.jsonl").write_text("{}")
    active = st.active_chat()
    assert active is not None and active.path == a
    assert len(st.chats()) == 2


def test_group_chat_resolution(tmp_path: Path) -> None:
    groups = tmp_path / "groups"
    groups.mkdir()
    # An old group: chat id == group id, metadata kept in the group, header-less chat file.
    old = {"id": "1700000000000", "name": "Old Crew", "members": ["A.png", "B.png"],
           "chat_id": "1700000000000", "chats": [], "chat_metadata": {"world_info": "W"},
           "past_metadata": {"older": {"world_info": "P"}}}  # fmt: skip
    (groups / "1700000000000.json").write_text(json.dumps(old))
    gc = tmp_path / "group chats"
    atomic_write(gc / "1700000000000.jsonl", jsonl(bot("A", "hi", original_avatar="A.png")), 100)
    atomic_write(gc / "orphan.jsonl", jsonl(HEADER), 200)  # no group lists it
    st = SillyTavernData(tmp_path)
    (ref,) = st.chats()
    assert (ref.chat_id, ref.group_id, ref.display_name) == ("1700000000000",) * 2 + ("Old Crew",)
    assert st.active_chat() == ref  # the newer orphan is not a chat ST can open
    chat = st.read_chat(ref)
    assert not chat.has_header and chat.metadata == {"world_info": "W"}
    assert [m.name for m in st.members(ref)] == ["A", "B"]  # names from avatars without cards
    assert st.find_chat("orphan") is None


def test_find_chat_disambiguates_by_avatar(tmp_path: Path) -> None:
    atomic_write(tmp_path / "chats" / "A" / "same.jsonl", jsonl(HEADER), 100)
    atomic_write(tmp_path / "chats" / "B" / "same.jsonl", jsonl(HEADER), 200)
    st = SillyTavernData(tmp_path)
    newest = st.find_chat("same")
    assert newest is not None and newest.avatar == "B.png"
    only_a = st.find_chat("same", avatar="A.png")
    assert only_a is not None and only_a.avatar == "A.png"
    assert st.find_chat("../same") is None and st.find_chat("missing") is None


def test_malformed_files_are_skipped(
    sample_dir: Path, st: SillyTavernData, caplog: pytest.LogCaptureFixture
) -> None:
    (sample_dir / "characters" / "Broken.png").write_bytes(b"\x89PNG\r\n\x1a\nrubbish")
    (sample_dir / "characters" / "Empty.png").write_bytes(b"")
    (sample_dir / "groups" / "bad.json").write_text("{oops")
    (sample_dir / "groups" / "list.json").write_text("[]")
    (sample_dir / "settings.json").write_text("not json")
    with caplog.at_level(logging.WARNING):
        assert len(st.characters()) == 4
        assert len(st.groups()) == 1
    assert "Broken.png" in caplog.text and "bad.json" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        st.characters()
    assert caplog.text == ""  # warned once per version of a file, not on every poll
    assert st.card("Broken.png") is None
    assert st.user_name() == "User"
    ref = st.active_chat()
    assert ref is not None
    ref.path.unlink()
    with pytest.raises(SillyTavernError, match="Cannot read chat"):
        st.read_chat(ref)


def test_missing_user_dir(tmp_path: Path) -> None:
    st = SillyTavernData(tmp_path / "nope")
    assert st.characters() == [] and st.groups() == [] and st.chats() == []
    assert st.active_chat() is None and st.find_chat("x") is None


# -- prompt --------------------------------------------------------------------------------


def test_prompt_layout(st: SillyTavernData) -> None:
    card = st.card("Seraphina.png")
    ref = st.find_chat(sample_mod.SOLO_CHAT_ID)
    assert card is not None and ref is not None
    prompt = assemble_prompt(card, st.read_chat(ref), "Alex")
    assert prompt.endswith(
        "\nAlex: *I take the cup.* Thank you. Why are you helping me?\nSeraphina:"
    )
    desc = prompt.index("Seraphina is a gentle forest guardian")
    pers = prompt.index("Seraphina's personality: kind")
    scen = prompt.index("Scenario: Alex wakes up in Seraphina's glade")
    example = prompt.index("***\nAlex: Who are you?\nSeraphina: *She tilts")
    start = prompt.index("***\nSeraphina: *Seraphina kneels")
    assert desc < pers < scen < example < start
    assert "{{" not in prompt and prompt.isascii()


def test_prompt_hidden_narrator_system_and_speaker() -> None:
    card = Card(name="Kael", avatar="Kael.png", system_prompt="Be {{char}}.", scenario="")
    messages = [
        Message("Alex", True, False, "hello {{char}}"),
        Message("Alex", True, True, "HIDDEN"),
        Message("System", False, False, "The wind howls.", extra={"type": "narrator"}),
        Message("Mira", False, False, "Hi <USER>!"),
    ]
    prompt = assemble_prompt(card, messages, "Alex", speaker="Mira", include_examples=False)
    assert prompt == ("Be Kael.\n***\nAlex: hello Kael\nThe wind howls.\nMira: Hi Alex!\nMira:")
    empty = assemble_prompt(card, [], "Alex")
    assert empty.endswith("\nKael:")


def test_prompt_budget_drops_oldest_first() -> None:
    card = Card(name="S", avatar="S.png", description="D" * 50, mes_example="<START>\nS: ex")
    messages = [Message("Alex", True, False, f"message {i}") for i in range(20)]
    full = assemble_prompt(card, messages, "Alex")
    cut = assemble_prompt(card, messages, "Alex", max_chars=150)
    assert len(cut) <= 150 < len(full)
    assert cut.startswith("D" * 50) and "message 19\nS:" in cut and "message 0\n" not in cut
    tiny = assemble_prompt(card, messages, "Alex", max_chars=10)
    assert tiny == "D" * 50 + "\n***\nS:"  # the story string is never cut


# -- sample data ---------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_committed_sample_matches_generator(sample_dir: Path) -> None:
    assert _tree(sample_mod.SAMPLE_DIR) == _tree(sample_dir)


def test_sample_files_are_real_formats(sample_dir: Path) -> None:
    solo = sample_dir / "chats" / "Seraphina" / f"{sample_mod.SOLO_CHAT_ID}.jsonl"
    raw = solo.read_bytes()
    assert not raw.endswith(b"\n") and raw.isascii()
    header = json.loads(raw.split(b"\n")[0])
    assert header["user_name"] == "unused" and "integrity" in header["chat_metadata"]
    for line in raw.split(b"\n")[1:]:
        assert all(32 <= ord(ch) < 127 for ch in json.loads(line)["mes"])
    for path in (sample_dir / "characters").glob("*.png"):
        with path.open("rb") as stream:
            chunks = dict(iter_text_chunks(stream))
        assert set(chunks) == {"chara", "ccv3"}
        v2, v3 = (json.loads(base64.b64decode(chunks[k])) for k in ("chara", "ccv3"))
        assert v2["spec"] == "chara_card_v2" and v3["spec"] == "chara_card_v3"
        assert v2["data"] == v3["data"] and v2["name"] == path.stem


def test_sample_prompts_fit_the_demo_slots(st: SillyTavernData) -> None:
    for ref in st.chats():
        chat = st.read_chat(ref)
        for member in st.members(ref):
            card = st.card(member.avatar)
            assert card is not None
            assert len(assemble_prompt(card, chat, st.user_name())) < 900


def test_copy_sample(tmp_path: Path) -> None:
    now = time.time()
    user_dir = copy_sample(tmp_path, now=now)
    assert user_dir == tmp_path / "default-user"
    st = SillyTavernData(user_dir)
    active = st.active_chat()
    assert active is not None and active.chat_id == sample_mod.GROUP_CHAT_ID
    assert now - 120 < active.mtime <= now
    assert len(st.chats()) == 2 and len(st.characters()) == 4


def test_service_layer_does_not_import_textual() -> None:
    code = "import sys, kvtui.sillytavern; assert 'textual' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
