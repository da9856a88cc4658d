"""Save-file names: the seed's format, normalisation, unambiguous parsing, legacy names."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvtui.store.names import (
    HASH_MARK,
    MAX_COMPONENT_BYTES,
    InvalidSaveName,
    ParsedName,
    check_filename,
    format_save_name,
    normalize,
    parse_save_name,
)

WHEN = datetime(2024, 1, 15, 14, 30, 22, tzinfo=UTC)

# Fragments that break naive schemes: separators, 14-digit runs, traversal, reserved tokens.
TRICKY = [
    "_tag_",
    "_character_",
    "tag",
    "character",
    "_",
    "__",
    " ",
    "20240115143022",
    "_20240115143022_",
    "../",
    "..",
    ".",
    "/",
    "\\",
    "~",
    ":",
    "\x00",
    "\n",
    "\u00a0",
    "\u200d",
    "e\u0301",
    "é",
    "Forest Party",
    "важный момент",
    "_slot3",
    "slot2_",
    ".bin",
    "😀",
    "中文",
    "x" * 70,
]

texts = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(TRICKY) | st.text(max_size=4), max_size=8).map("".join),
)
tags = st.none() | texts
moments = st.datetimes(
    min_value=datetime(1000, 1, 1),
    max_value=datetime(9998, 12, 31),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=3)), timezone(timedelta(hours=-8))]),
)


def nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


# -- examples from the seed and the issue ---------------------------------------------------------


def test_seed_examples() -> None:
    assert format_save_name("chat1", "Alice", WHEN) == "chat1_20240115143022_character_Alice.bin"
    assert (
        format_save_name("chat1", "Alice", WHEN, tag="важный момент")
        == "chat1_20240115143022_tag_важный_момент_character_Alice.bin"
    )
    assert parse_save_name("chat1_20240115143022_tag_важный_момент_character_Alice.bin") == (
        ParsedName("chat1", "Alice", WHEN, "важный_момент")
    )


def test_timestamps_are_utc_and_naive_times_are_refused() -> None:
    moscow = WHEN.astimezone(timezone(timedelta(hours=3)))
    assert format_save_name("c", "n", moscow) == format_save_name("c", "n", WHEN)
    with pytest.raises(ValueError, match="aware"):
        format_save_name("c", "n", datetime(2024, 1, 15, 14, 30, 22))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Forest Party", "Forest_Party"),
        ("важный момент", "важный_момент"),
        ("Серафина", "Серафина"),
        ("Seraphina - 2025-11-17@14h30m22s", "Seraphina_-_2025-11-17@14h30m22s"),
        ("Luna 🌙", "Luna_🌙"),
        ("e\u0301clair", "éclair"),
    ],
)
def test_common_names_stay_readable(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


@pytest.mark.parametrize(
    ("raw", "readable"),
    [
        ("Forest_Party", "Forest_Party"),
        ("a/b", "ab"),
        ("../etc/passwd", "etcpasswd"),
        (".hidden", "hidden"),
        ("Dr.", "Dr"),
        ("a..b", "a.b"),
        ("my tag", "my_Tag"),
        ("character", "Character"),
        ("", "unnamed"),
        ("???", "unnamed"),
        ("tab\there", "tab_here"),
    ],
)
def test_lossy_names_get_a_hash(raw: str, readable: str) -> None:
    name = normalize(raw)
    head, mark, digest = name.rpartition(HASH_MARK)
    assert mark and head == readable and len(digest) == 8


def test_space_and_underscore_spellings_differ() -> None:
    assert normalize("важный момент") != normalize("важный_момент")
    assert normalize("важный_момент").startswith("важный_момент~")


def test_long_names_are_cut_with_a_hash_and_stay_distinct() -> None:
    a, b = "Очень длинное имя " * 10 + "A", "Очень длинное имя " * 10 + "B"
    assert len(normalize(a).encode()) <= MAX_COMPONENT_BYTES
    assert normalize(a) != normalize(b)
    assert normalize(a).startswith("Очень_длинное")


# -- the extension's names ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        # current format, as the extension writes it (ASCII-only normalisation)
        (
            "Seraphina_-_2025-11-17_14h30m22s_20251117143022_character_Seraphina.bin",
            ParsedName(
                "Seraphina_-_2025-11-17_14h30m22s",
                "Seraphina",
                datetime(2025, 11, 17, 14, 30, 22, tzinfo=UTC),
            ),
        ),
        # a chat containing "tag": the extension's own parser gets this wrong
        (
            "my_tag_chat_20240115143022_character_Alice.bin",
            ParsedName("my_tag_chat", "Alice", WHEN),
        ),
        (
            "a_character_b_20240115143022_character_c.bin",
            ParsedName("a_character_b", "c", WHEN),
        ),
        (
            "c_20240115143022_tag_end_of_chapter_character_Bob.bin",
            ParsedName("c", "Bob", WHEN, "end_of_chapter"),
        ),
        # older formats with slot numbers
        ("chat1_20240115143022_slot2.bin", ParsedName("chat1", "", WHEN, None, 2, True)),
        ("chat1_20240115143022_tag_x_y_slot0.bin", ParsedName("chat1", "", WHEN, "x_y", 0, True)),
        ("chat1_slot3_20240115143022.bin", ParsedName("chat1", "", WHEN, None, 3, True, True)),
        (
            "user_chat1_slot3_20240115143022.bin",
            ParsedName("user_chat1", "", WHEN, None, 3, True, True),
        ),
    ],
)
def test_extension_names(filename: str, expected: ParsedName) -> None:
    assert parse_save_name(filename) == expected


@pytest.mark.parametrize(
    "filename",
    [
        "persist.bin",
        "slot-0.cache",
        "chat1_20240115143022_character_Alice.bin.json",
        "chat1_20241315143022_character_Alice.bin",  # month 13
        "_20240115143022_character_Alice.bin",  # no chat
        "chat1_20240115143022_character_.bin",  # no character
        "chat1_2024011514302_character_Alice.bin",  # 13 digits
        "chat1_٢٠٢٤٠١١٥١٤٣٠٢٢_character_Alice.bin",  # non-ASCII digits
        "dir/chat1_20240115143022_character_Alice.bin",
    ],
)
def test_other_files_do_not_parse(filename: str) -> None:
    assert parse_save_name(filename) is None


# -- file names the server and the file system accept ---------------------------------------------


@pytest.mark.parametrize(
    "bad", ["", ".", "..", "../x.bin", "a/b.bin", "a\\b.bin", "a..b.bin", "x\x00.bin", "x.", " x"]
)
def test_check_filename_refuses(bad: str) -> None:
    with pytest.raises(InvalidSaveName):
        check_filename(bad)


def test_check_filename_refuses_long_names() -> None:
    with pytest.raises(InvalidSaveName, match="255"):
        check_filename("я" * 130 + ".bin")
    assert check_filename("chat1_20240115143022_character_Alice.bin")


# -- properties -----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(chat=texts, character=texts, tag=tags, when=moments)
def test_names_round_trip_and_stay_inside_the_directory(
    chat: str, character: str, tag: str | None, when: datetime
) -> None:
    name = format_save_name(chat, character, when, tag)
    parsed = parse_save_name(name)
    assert parsed == ParsedName(
        normalize(chat),
        normalize(character),
        when.astimezone(UTC).replace(microsecond=0),
        None if tag is None else normalize(tag),
    )
    assert check_filename(name) == name
    assert check_filename(name + ".json")  # the sidecar too
    assert len((name + ".json").encode()) <= 255
    base = Path("/saves")
    assert (base / name).parent == base
    assert not name.startswith(".") and "\x00" not in name


@settings(max_examples=300, deadline=None)
@given(text=texts)
def test_normalize_output_is_safe_bounded_and_unambiguous(text: str) -> None:
    part = normalize(text)
    assert part and len(part.encode()) <= MAX_COMPONENT_BYTES
    assert part == nfc(part)
    assert "tag" not in part.split("_") and "character" not in part.split("_")
    assert not part.startswith(".") and ".." not in part
    assert part.count(HASH_MARK) <= 1
    if HASH_MARK not in part:  # readable form: exactly the text, spaces shown as underscores
        assert part.replace("_", " ") == nfc(text)
    assert normalize(text) == part


def variants(text: str) -> list[str]:
    """Spellings a lossy normaliser would merge with ``text``."""
    return [
        text.replace(" ", "_"),
        text.replace("_", " "),
        text + "/",
        "." + text,
        text.upper(),
        text + "~",
        text[:-1],
        text + "x" * 80,
        unicodedata.normalize("NFD", text),
        "",
    ]


@settings(max_examples=200, deadline=None)
@given(text=texts, others=st.lists(texts, max_size=4))
def test_distinct_texts_never_share_a_component(text: str, others: list[str]) -> None:
    candidates = {nfc(t) for t in [text, *others, *variants(text)]}
    assert len({normalize(t) for t in candidates}) == len(candidates)


@settings(max_examples=200, deadline=None)
@given(a=st.tuples(texts, texts, tags), b=st.tuples(texts, texts, tags))
def test_distinct_saves_never_share_a_name(
    a: tuple[str, str, str | None], b: tuple[str, str, str | None]
) -> None:
    chat, character, tag = a
    triples = {
        a,
        b,
        (character, chat, tag),
        (chat, character, None),
        (chat, character, ""),
        (chat + "_tag_" + (tag or ""), character, None),
        (chat, (tag or "") + "_character_" + character, None),
        (chat + "_20240115143022", character, tag),
    }
    canonical = {(nfc(c), nfc(h), None if t is None else nfc(t)) for c, h, t in triples}
    names = {format_save_name(c, h, WHEN, t) for c, h, t in canonical}
    assert len(names) == len(canonical)
