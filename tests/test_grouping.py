"""Grouping saves chat → character → saves, and filtering them as one types (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from kvtui.store import (
    UNPARSED_CHAT,
    ChatGroup,
    SaveEntry,
    SaveMeta,
    filter_groups,
    format_save_name,
    group_saves,
    normalize,
)

T0 = datetime(2025, 11, 17, 12, 0, 0, tzinfo=UTC)


def entry(
    chat: str,
    character: str,
    minutes: int,
    tag: str | None = None,
    *,
    sidecar: bool = True,
) -> SaveEntry:
    when = T0 + timedelta(minutes=minutes)
    meta = SaveMeta(chat=chat, character=character, tag=tag) if sidecar else None
    return SaveEntry(
        filename=format_save_name(chat, character, when, tag),
        chat=chat if sidecar else normalize(chat),
        character=character if sidecar else normalize(character),
        tag=tag if sidecar or tag is None else normalize(tag),
        timestamp=when,
        size=100,
        n_saved=10,
        meta=meta,
        chat_key=normalize(chat),
        character_key=normalize(character),
    )


def unparsed(name: str, minutes: int) -> SaveEntry:
    return SaveEntry(
        filename=name,
        chat=UNPARSED_CHAT,
        character=name.removesuffix(".bin"),
        tag=None,
        timestamp=T0 + timedelta(minutes=minutes),
        size=1,
        n_saved=None,
        meta=None,
        chat_key="",
        character_key=f"~file:{name}",
        parsed=False,
    )


ENTRIES = [
    entry("Forest Party", "Seraphina", 1),
    entry("Forest Party", "Seraphina", 5, tag="важный момент"),
    entry("Forest Party", "Seraphina", 3),
    entry("Forest Party", "Lily", 4),
    entry("Forest Party", "Lily", 2, sidecar=False),  # the extension's file, same chat and name
    entry("Seraphina - 2025-11-17@12h00m", "Seraphina", 10),
    entry("Old chat", "Bob", -100, tag="boss fight"),
    unparsed("persist.bin", 1000),
]


def shape(groups: list[ChatGroup]) -> list[tuple[str, bool, list[tuple[str, list[int]]]]]:
    return [
        (
            g.chat,
            g.is_current,
            [
                (c.character, [int((s.timestamp - T0).total_seconds() // 60) for s in c.saves])
                for c in g.characters
            ],
        )
        for g in groups
    ]


def test_groups_by_chat_then_character_newest_first() -> None:
    assert shape(group_saves(ENTRIES, current_chat=None)) == [
        ("Seraphina - 2025-11-17@12h00m", False, [("Seraphina", [10])]),
        ("Forest Party", False, [("Seraphina", [5, 3, 1]), ("Lily", [4, 2])]),
        ("Old chat", False, [("Bob", [-100])]),
        (UNPARSED_CHAT, False, [("persist", [1000])]),
    ]


def test_the_current_chat_comes_first_by_raw_or_normalised_name() -> None:
    for current in ("Old chat", "Old_chat"):
        groups = group_saves(ENTRIES, current_chat=current)
        assert [(g.chat, g.is_current) for g in groups][:2] == [
            ("Old chat", True),
            ("Seraphina - 2025-11-17@12h00m", False),
        ]
        assert sum(g.is_current for g in groups) == 1
    assert not any(g.is_current for g in group_saves(ENTRIES, current_chat="No saves here"))


def test_raw_names_from_sidecars_are_shown() -> None:
    only_extension = [entry("Forest Party", "Lily", 2, sidecar=False)]
    assert [g.chat for g in group_saves(only_extension, None)] == ["Forest_Party"]
    [forest] = [g for g in group_saves(ENTRIES, None) if g.chat_key == "Forest_Party"]
    assert forest.chat == "Forest Party" and forest.save_count == 5
    assert forest.newest == T0 + timedelta(minutes=5)


def test_filter_matches_chat_character_and_tag_case_insensitively() -> None:
    groups = group_saves(ENTRIES, current_chat="Forest Party")

    def found(query: str) -> list[tuple[str, list[tuple[str, list[int]]]]]:
        return [(chat, people) for chat, _, people in shape(filter_groups(groups, query))]

    assert found("") == found("   ") == [(chat, p) for chat, _, p in shape(groups)]
    assert found("OLD") == [("Old chat", [("Bob", [-100])])]
    assert found("lil") == [("Forest Party", [("Lily", [4, 2])])]
    assert found("СЕРАФ") == []
    assert found("ВАЖН") == [("Forest Party", [("Seraphina", [5])])]
    assert found("forest seraph") == [("Forest Party", [("Seraphina", [5, 3, 1])])]
    assert found("seraphina 2025") == [
        ("Seraphina - 2025-11-17@12h00m", [("Seraphina", [10])]),
    ]
    assert found("boss fight") == [("Old chat", [("Bob", [-100])])]
    assert found("forest_party lily") == [("Forest Party", [("Lily", [4, 2])])]
    assert found("persist") == [(UNPARSED_CHAT, [("persist", [1000])])]
    assert found("nobody") == []


def test_filter_does_not_change_its_input() -> None:
    groups = group_saves(ENTRIES, current_chat=None)
    before = shape(groups)
    filter_groups(groups, "важный")
    assert shape(groups) == before
