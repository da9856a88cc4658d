"""The memory contract: a corpus of broken replies, each giving the right memory or error code."""

from __future__ import annotations

import json

import pytest

from kvtui.memory.contract import (
    Memory,
    MemoryReplyError,
    ReplyCode,
    memory_schema,
    parse_memory,
)

GOOD = Memory("Quiet Confession", "Alice admits the hack was personal.", ("Alice", "Bob", "hack"))
BODY = (
    '{"title": "Quiet Confession", "content": "Alice admits the hack was personal.", '
    '"keywords": ["Alice", "Bob", "hack"]}'
)

# (reply, expected memory) — replies the parser must repair.
REPAIRED: list[tuple[str, Memory]] = [
    (BODY, GOOD),
    ("```json\n" + BODY + "\n```", GOOD),
    ("```\n" + BODY + "\n```", GOOD),
    ("Here is the memory you asked for:\n" + BODY + "\nHope it helps!", GOOD),
    ("Sure! ```json\n" + BODY + "``` Let me know.", GOOD),
    ("<think>The user wants JSON. Let me think {about} it.</think>\n" + BODY, GOOD),
    ("I considered the scene carefully.</think>" + BODY, GOOD),
    ("<thinking>hmm</thinking>```json\n" + BODY + "\n```", GOOD),
    (BODY.replace('"hack"]', '"hack",]').replace("]}", "],}"), GOOD),
    (
        '{\n  // the title\n  "title": "Quiet Confession",\n  /* the text */\n'
        '  "content": "Alice admits the hack was personal.",\n  "keywords": ["Alice", "Bob", '
        '"hack"]\n}',
        GOOD,
    ),
    (
        '{title: "Quiet Confession", content: "Alice admits the hack was personal.", '
        'keywords: ["Alice", "Bob", "hack"]}',
        GOOD,
    ),
    (BODY.replace('"content"', '"summary"'), GOOD),
    (BODY.replace('"content"', '"memory_content"'), GOOD),
    (
        '{"title": "Quiet Confession", "content": "Alice admits the hack was personal.", '
        '"keywords": "Alice, Bob, hack"}',
        GOOD,
    ),
    (
        '{"title": "Quiet Confession", "content": "Alice admits the hack was personal.", '
        '"keywords": ["Alice", "", "  ", "Bob", "alice", "hack"]}',
        GOOD,
    ),
    ("\ufeff" + BODY, GOOD),
    (BODY.replace("Alice admits", "Alice\x07 admits"), GOOD),
    (
        '{"title": "Quiet Confession", "content": "Alice admits\nthe hack\twas personal.", '
        '"keywords": ["Alice", "Bob", "hack"]}',
        Memory("Quiet Confession", "Alice admits\nthe hack\twas personal.", GOOD.keywords),
    ),
    ("[" + BODY + "]", GOOD),
    ('{"note": "draft"}\nFinal answer: ' + BODY, GOOD),
    (
        '{"title": "  Quiet Confession  ", "content": "  Alice admits the hack was personal. ", '
        '"keywords": [" Alice ", "Bob", "hack"]}',
        GOOD,
    ),
    (
        '{"title": "Dawn, 5:30 // plans", "content": "They meet at 5:30, trailing, as agreed, }",'
        ' "keywords": ["dawn"]}',
        Memory("Dawn, 5:30 // plans", "They meet at 5:30, trailing, as agreed, }", ("dawn",)),
    ),
    (
        '{"title": "Numbers", "content": "Room 17 again.", "keywords": ["K", 17, "room"]}',
        Memory("Numbers", "Room 17 again.", ("K", "17", "room")),
    ),
]

# (reply, expected code, stop_type) — replies that must fail with that code.
FAILED: list[tuple[str, ReplyCode, str | None]] = [
    ("", ReplyCode.NO_JSON_BLOCK, "eos"),
    ("Alice and Bob talked about the hack at night.", ReplyCode.NO_JSON_BLOCK, "eos"),
    (
        "<think>I should answer in JSON.</think>Sorry, I cannot do that.",
        ReplyCode.NO_JSON_BLOCK,
        None,
    ),
    ('{"title": "Quiet", "content": "Alice admits the', ReplyCode.INCOMPLETE_SENTENCE, "eos"),
    ('{"title": "Quiet", "content": "Alice.", "keywords": ["a", "b"', ReplyCode.UNBALANCED, None),
    ('{"title": "Quiet", "content": "Alice admits the', ReplyCode.TRUNCATED, "limit"),
    ('{"title": "Quiet", "content": "Alice.", "keywords": ["a"', ReplyCode.TRUNCATED, "limit"),
    (
        '{"content": "Alice admits it.", "keywords": ["Alice"]}',
        ReplyCode.MISSING_FIELDS_TITLE,
        None,
    ),
    (
        '{"title": "", "content": "Alice.", "keywords": ["Alice"]}',
        ReplyCode.MISSING_FIELDS_TITLE,
        None,
    ),
    ('{"title": "Quiet", "keywords": ["Alice"]}', ReplyCode.MISSING_FIELDS_CONTENT, None),
    (
        '{"title": "Quiet", "content": "   ", "keywords": ["A"]}',
        ReplyCode.MISSING_FIELDS_CONTENT,
        None,
    ),
    ('{"title": "Quiet", "content": "Alice admits it."}', ReplyCode.INVALID_KEYWORDS, None),
    ('{"title": "Q", "content": "Alice.", "keywords": []}', ReplyCode.INVALID_KEYWORDS, None),
    (
        '{"title": "Q", "content": "Alice.", "keywords": ["", " "]}',
        ReplyCode.INVALID_KEYWORDS,
        None,
    ),
    (
        '{"title": "Q", "content": "Alice.", "keywords": [{"k": 1}]}',
        ReplyCode.INVALID_KEYWORDS,
        None,
    ),
    ('{"title": "Q", "content": "Alice.", "keywords": 7}', ReplyCode.INVALID_KEYWORDS, None),
    ('{"title": "Q" "content": "Alice." "keywords" ["a"]}', ReplyCode.MALFORMED, None),
    ('```json\n{"title": "Q", "content": "Ali', ReplyCode.INCOMPLETE_SENTENCE, None),
    ('"just a string"', ReplyCode.NO_JSON_BLOCK, None),
]


def test_the_corpus_is_big_enough() -> None:
    assert len(REPAIRED) + len(FAILED) >= 30


@pytest.mark.parametrize(("reply", "expected"), REPAIRED)
def test_repairable_replies_give_the_memory(reply: str, expected: Memory) -> None:
    assert parse_memory(reply, stop_type="eos") == expected


@pytest.mark.parametrize(("reply", "code", "stop_type"), FAILED)
def test_broken_replies_give_the_right_code(
    reply: str, code: ReplyCode, stop_type: str | None
) -> None:
    with pytest.raises(MemoryReplyError) as caught:
        parse_memory(reply, stop_type=stop_type)
    assert caught.value.code is code, str(caught.value)
    assert caught.value.hint and str(caught.value).startswith(code.value)


def test_a_complete_reply_at_the_limit_is_still_accepted() -> None:
    # A model without grammar can finish the JSON and babble on until n_predict.
    assert parse_memory(BODY + "\nAnd then some more text", stop_type="limit") == GOOD


def test_the_truncated_flag_counts_as_the_limit() -> None:
    with pytest.raises(MemoryReplyError) as caught:
        parse_memory('{"title": "Q", "content": "cut', truncated=True)
    assert caught.value.code is ReplyCode.TRUNCATED


def test_schema_has_no_pattern_or_format() -> None:
    schema = memory_schema(40, 300, 8)
    text = json.dumps(schema)
    assert '"pattern"' not in text and '"format"' not in text
    assert schema["required"] == ["title", "content", "keywords"]
    assert schema["properties"]["content"]["maxLength"] == 300
    assert schema["properties"]["keywords"]["maxItems"] == 8
