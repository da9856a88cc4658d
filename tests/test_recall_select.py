"""World-Info-style matching, the sticky penalty, top-K in a budget, and the lorebook reader."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kvtui.recall.books import memory_books
from kvtui.recall.memories import Memory, parse_book
from kvtui.recall.select import (
    Sticky,
    advance,
    estimate_tokens,
    key_matches,
    pick,
    rank,
    render_block,
)
from kvtui.recall.settings import RecallSettings


def mem(uid: int, content: str, *keys: str, **kw: object) -> Memory:
    return Memory(f"b#{uid}", uid, f"[{uid:03}]", content, tuple(keys), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("haystack", "key", "case", "whole", "expected"),
    [
        ("Alex drew his sword.", "sword", False, True, True),
        ("Alex drew his swordfish.", "sword", False, True, False),
        ("Alex drew his swordfish.", "sword", False, False, True),
        ("the SWORD!", "sword", False, True, True),
        ("the SWORD!", "sword", True, True, False),
        ("a red dragon flew", "red dragon", False, True, True),
        ("a red dragons flew", "red dragon", False, True, True),  # several words: a substring
        ("Dragons!", "/dragons?/i", True, True, True),  # a regex overrides the options
        ("Серафина пришла", "серафина", False, True, True),
        ("Серафинах", "серафина", False, True, False),  # Unicode words (see the module doc)
        ("x", "/[/i", False, True, False),  # an invalid regex is plain text
    ],
)
def test_key_matching(haystack: str, key: str, case: bool, whole: bool, expected: bool) -> None:
    assert key_matches(haystack, key, case_sensitive=case, whole_words=whole) is expected


def test_scan_depth_and_entry_overrides() -> None:
    s = RecallSettings(scan_depth=2)
    window = ["Alex: the tea", "Seraphina: a sword", "Alex: wolves"]  # newest first
    memories = [
        mem(0, "tea", "tea"),
        mem(1, "sword", "sword"),
        mem(2, "wolves", "wolves"),
        mem(3, "wolves deep", "wolves", scan_depth=3),
        mem(4, "case", "TEA", case_sensitive=True),
    ]
    ids = [x.memory.id for x in rank(memories, window, s, {}, 1)]
    assert ids == ["b#0", "b#1", "b#3"]  # newest match first; #2 is beyond depth 2


def test_secondary_keys_and_constant() -> None:
    s = RecallSettings(constant_always=True)
    window = ["Alex: the sword by the river"]
    memories = [
        mem(0, "any", "sword", secondary=("river", "lake")),  # AND ANY
        mem(1, "not all", "sword", secondary=("river", "lake"), selective_logic=1),
        mem(2, "not any", "sword", secondary=("river",), selective_logic=2),
        mem(3, "and all", "sword", secondary=("river", "lake"), selective_logic=3),
        mem(4, "always", constant=True),
        mem(5, "keyless"),
    ]
    ids = sorted(x.memory.id for x in rank(memories, window, s, {}, 1))
    assert ids == ["b#0", "b#1", "b#4"]
    # by default a constant entry (kvtui's memory books default to constant) needs its keywords
    default = RecallSettings()
    constant = [mem(6, "c", "wolves", constant=True), mem(7, "d", "sword", constant=True)]
    assert [x.memory.id for x in rank(constant, window, default, {}, 1)] == ["b#7"]


def test_score_more_keys_and_newer_win_ties_by_order_then_uid() -> None:
    s = RecallSettings(scan_depth=3)
    window = ["Alex: tea", "Seraphina: sword and river", "Alex: old"]
    memories = [
        mem(0, "one key new", "tea"),
        mem(1, "two keys", "sword", "river"),
        mem(2, "tie a", "old", order=100),
        mem(3, "tie b", "old", order=200),
        mem(4, "tie c", "old", order=200),
    ]
    ranked = rank(memories, window, s, {}, 1)
    assert [x.memory.id for x in ranked] == ["b#1", "b#0", "b#3", "b#4", "b#2"]
    assert ranked[0].score == pytest.approx(2 + 1 / 2)
    assert ranked[1].score == pytest.approx(1 + 1)


def test_sticky_penalty_rotates_a_repeated_memory() -> None:
    s = RecallSettings(top_k=1, sticky_penalty=0.6, sticky_max_streak=2)
    window = ["Alex: sword tea"]
    memories = [mem(0, "sword", "sword"), mem(1, "tea", "tea")]
    sticky: dict[str, Sticky] = {}
    chosen = []
    for round_no in range(1, 6):
        pick_ = pick(rank(memories, window, s, sticky, round_no), s)
        chosen.append(pick_[0].id)
        sticky = advance(sticky, [m.id for m in pick_], round_no)
    assert chosen == ["b#0", "b#1", "b#0", "b#1", "b#0"]
    assert sticky["b#0"] == Sticky(5, 1)
    # a gap resets the streak: no penalty two rounds later
    assert rank(memories, window, s, {"b#0": Sticky(3, 3)}, 5)[0].penalty == 0.0
    assert rank(memories, window, s, {"b#0": Sticky(4, 9)}, 5)[1].penalty == pytest.approx(1.2)


def test_top_k_and_budget_skip_what_overflows() -> None:
    s = RecallSettings(top_k=3, token_budget=10)
    window = ["a b c d"]
    memories = [
        mem(0, "x" * 20, "a"),  # 5 tokens
        mem(1, "y" * 40, "b"),  # 10 tokens: does not fit after #0, skipped
        mem(2, "z" * 12, "c"),  # 3 tokens (+1 for the joiner)
        mem(3, "w" * 4, "d"),  # 1 token + 1 for the joiner: only 1 token is left
    ]
    chosen = pick(rank(memories, window, s, {}, 1), s)
    assert [m.id for m in chosen] == ["b#0", "b#2"]
    assert estimate_tokens("x" * 20) == 5
    counted = pick(rank(memories, window, s, {}, 1), s, lambda text: 1, top_k=3)
    assert [m.id for m in counted] == ["b#0", "b#1", "b#2"]


def test_render_is_chronological_with_the_template() -> None:
    s = RecallSettings(item_template="- {title}: {content} ({keys})", joiner="\n")
    text = render_block([mem(2, "later", "k2"), mem(1, "earlier", "k1", "k1b")], s)
    assert text == "- [001]: earlier (k1, k1b)\n- [002]: later (k2)"


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="macro name"):
        RecallSettings(macro="kvtui memories")
    with pytest.raises(ValueError, match="content"):
        RecallSettings(item_template="{nope}")
    assert RecallSettings(macro="{{my_mem}}").macro == "my_mem"


# -- the lorebook reader -------------------------------------------------------------------


def wi_entry(uid: int, **fields: object) -> dict[str, object]:
    """An entry with SillyTavern's template fields (a subset that recall reads) and overrides."""
    entry: dict[str, object] = {
        "uid": uid,
        "key": [],
        "keysecondary": [],
        "comment": "",
        "content": "",
        "constant": False,
        "vectorized": False,
        "selective": True,
        "selectiveLogic": 0,
        "order": 100,
        "position": 0,
        "disable": False,
        "scanDepth": None,
        "caseSensitive": None,
        "matchWholeWords": None,
        "displayIndex": uid,
    }
    entry.update(fields)
    return entry


def write_book(path: Path, entries: list[dict[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"entries": {str(e["uid"]): e for e in entries}}
    path.write_text(json.dumps(data), encoding="utf-8")


def test_lorebook_reads_only_enabled_kvtui_memories(tmp_path: Path) -> None:
    worlds = tmp_path / "worlds"
    chat = "Seraphina - 2026-12-01@21h00m00s"
    source = memory_books(worlds, "kvtui - {{chat}}")
    [path] = source.paths(chat)
    assert path == worlds / "kvtui - Seraphina - 2026-12-01@21h00m00s.json"
    write_book(
        path,
        [
            wi_entry(0, kvtui=True, key=["sword", " "], comment="[001] - Sword", content="S."),
            wi_entry(1, key=["tea"], content="the user's own entry"),
            wi_entry(2, kvtui=True, disable=True, key=["x"], content="disabled"),
            wi_entry(3, kvtui=True, key=["y"], content="  "),
            wi_entry(4, kvtui=True, key=["z"], content="Z.", scanDepth=5, matchWholeWords=False),
            wi_entry(5, kvtui=True, kvtui_kind="tracker", key=["t"], content="a side prompt"),
        ],
    )
    found = source.memories(chat)
    assert [(m.uid, m.keys, m.content) for m in found] == [(0, ("sword",), "S."), (4, ("z",), "Z.")]
    assert (found[1].scan_depth, found[1].whole_words, found[1].id) == (5, False, f"{path.name}#4")
    assert source.memories("another chat") == []


def test_memories_written_by_kvtui_memory_are_recalled(tmp_path: Path) -> None:
    """The memory workflow's own writer, SillyTavern's sample data directory (a group chat's
    book is named after the group), and recall reading it back."""
    from kvtui.memory.contract import Memory as Written
    from kvtui.memory.lorebook import EntrySettings, Lorebook, worlds_dir
    from kvtui.memory.settings import MemorySettings
    from kvtui.sillytavern import SillyTavernData, copy_sample
    from kvtui.sillytavern.sample import GROUP_CHAT_ID

    st = SillyTavernData(copy_sample(tmp_path))
    worlds = worlds_dir(st.user_dir)
    ms = MemorySettings()
    source = memory_books(worlds, ms.memory_book_name, st.find_chat)
    [path] = source.paths(GROUP_CHAT_ID)
    assert path.name != f"kvtui - {GROUP_CHAT_ID}.json" and GROUP_CHAT_ID in path.name
    book = Lorebook.open(path, GROUP_CHAT_ID)
    entry = EntrySettings.from_memory(ms)
    book.add_memory(Written("Sword", "The sword lies by the river.", ("sword",)), (0, 3), entry)
    book.add_memory(Written("Tea", "Mint tea at dusk.", ("tea", "dusk")), (4, 9), entry)
    found = source.memories(GROUP_CHAT_ID)
    assert [(m.number, m.content, m.keys) for m in found] == [
        (1, "The sword lies by the river.", ("sword",)),
        (2, "Mint tea at dusk.", ("tea", "dusk")),
    ]
    ranked = rank(found, ["Alex: tea?"], RecallSettings(), {}, 1)
    assert [x.memory.content for x in ranked] == ["Mint tea at dusk."]


def test_lorebook_rereads_a_changed_file_and_survives_damage(tmp_path: Path) -> None:
    source = memory_books(tmp_path / "worlds", "kvtui - {{chat}}")
    [path] = source.paths("c")
    write_book(path, [wi_entry(0, kvtui=True, key=["a"], content="A.")])
    assert [m.content for m in source.memories("c")] == ["A."]
    write_book(path, [wi_entry(0, kvtui=True, key=["a"], content="A2, longer.")])
    os.utime(path, ns=(1, 2_000_000_000_000_000_000))
    assert [m.content for m in source.memories("c")] == ["A2, longer."]
    path.write_text("{broken", encoding="utf-8")
    assert source.memories("c") == []
    assert source.last_error is not None and "unreadable" in source.last_error
    assert path.read_text(encoding="utf-8") == "{broken"  # never touched


def test_parse_book_rejects_a_non_world_info_file() -> None:
    with pytest.raises(ValueError, match="entries"):
        parse_book("x.json", {"name": "x"})
