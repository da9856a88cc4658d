"""Prompt fingerprints: prefixes, block-granular agreement, JSON round trip, canonical texts."""

from __future__ import annotations

import json

import pytest

from kvtui.fingerprint import (
    BLOCK_CHARS,
    FingerprintError,
    PromptFingerprint,
    canonical_text,
)
from kvtui.store import SaveMeta

STORY = "".join(f"Turn {i}: Серафина walks through the forest 你好. " for i in range(60))


def test_a_prompt_is_a_prefix_of_its_continuations_only() -> None:
    fp = PromptFingerprint.of(STORY)
    assert fp.length == len(STORY) and fp.block == BLOCK_CHARS
    assert fp.is_prefix_of(STORY) and fp.is_prefix_of(STORY + "\nMira: hello")
    assert not fp.is_prefix_of(STORY[:-1])
    edited = STORY[:1000] + "X" + STORY[1001:]
    assert not fp.is_prefix_of(edited)
    assert fp.common_prefix_chars(edited) == 1000 // BLOCK_CHARS * BLOCK_CHARS
    assert fp.common_prefix_chars(STORY + "more") == len(STORY)
    assert fp.common_prefix_chars("") == 0
    assert PromptFingerprint.of("").is_prefix_of("anything")


def test_json_round_trip_and_bad_input() -> None:
    fp = PromptFingerprint.of(STORY, block=100)
    data = fp.to_json()
    assert PromptFingerprint.from_json(json.loads(json.dumps(data))) == fp
    assert PromptFingerprint.from_json(json.dumps(data)) == fp
    for bad in ("{", {"v": 2}, {**data, "hashes": data["hashes"][:-1]}, {**data, "block": 0}):
        with pytest.raises(FingerprintError):
            PromptFingerprint.from_json(bad)


def test_sidecars_carry_a_fingerprint_and_old_sidecars_still_load() -> None:
    fp = PromptFingerprint.of(STORY)
    meta = SaveMeta(chat="c", character="Mira", fingerprint=fp)
    again = SaveMeta.model_validate_json(meta.model_dump_json())
    assert again.prompt_fingerprint() == fp
    old = SaveMeta.model_validate_json('{"chat": "c", "character": "Mira", "n_saved": 3}')
    assert old.fingerprint is None and old.prompt_fingerprint() is None
    broken = SaveMeta.model_validate({"chat": "c", "character": "M", "fingerprint": {"v": 9}})
    assert broken.prompt_fingerprint() is None


def test_canonical_text_grows_with_the_conversation() -> None:
    first = {
        "messages": [
            {"role": "system", "content": "You are Mira."},
            {"role": "user", "content": "Mira: hi", "name": "Ann"},
        ]
    }
    later = {
        "messages": [
            *first["messages"],
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
        ]
    }
    a, b = canonical_text(first), canonical_text(later)
    assert b.startswith(a) and "Hello" in b and "[image_url]" in b and "user:Ann" in a
    assert PromptFingerprint.of(a).is_prefix_of(b)
    swapped = {"messages": [first["messages"][1], first["messages"][0]]}
    assert not PromptFingerprint.of(a).is_prefix_of(canonical_text(swapped))


def test_canonical_text_of_text_completion_prompts() -> None:
    assert canonical_text({"prompt": "Once upon"}) == "Once upon"
    assert canonical_text({"prompt": [1, 2, 3]}) == "1,2,3,"
    assert canonical_text({"prompt": [1, 2, 34]}).startswith("1,2,3") is True
    assert not canonical_text({"prompt": [1, 2, 34]}).startswith(
        canonical_text({"prompt": [1, 2, 3]})
    )
    assert canonical_text({"prompt": ["first", "second"]}) == "first"
    assert canonical_text({}) == ""
