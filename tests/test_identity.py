"""Identity inference: explicit fields, SillyTavern prompt tails and stop strings, fingerprints."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvtui.proxy.identity import (
    FINGERPRINT_CHARS,
    UNKNOWN_CHAT,
    Clue,
    IdentitySource,
    fingerprint,
    infer_identity,
    last_speaker,
)
from kvtui.slots import GenType

STORY = (
    "Seraphina is the guardian of Eldoria's forest. Brom is a dwarf smith. Lyra is a bard.\n"
    "Seraphina's personality: caring\n"
    "Scenario: Alex wakes up in the glade.\n"
)
CHAT = "***\nSeraphina: *smiles* Welcome.\nAlex: Hi! Where am I?"
MEMBERS = ["Seraphina", "Brom", "Lyra"]


def body(prompt: str, stop: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A trimmed SillyTavern text-completion body (reference §6.3)."""
    return {
        "prompt": prompt,
        "stop": ["\nAlex:"] if stop is None else stop,
        "stopping_strings": ["\nAlex:"] if stop is None else stop,
        "n_predict": 300,
        "cache_prompt": True,
        "api_type": "llamacpp",
        **extra,
    }


# -- explicit ----------------------------------------------------------------------------


def test_the_extension_object_wins_and_is_removed() -> None:
    kvtui = {
        "chat_id": "Forest Party - 2026",
        "group_id": "g1",
        "avatar": "Brom.png",
        "name": "Brom",
    }
    request = body(STORY + CHAT + "\nSeraphina:", kvtui=kvtui)
    identity, forwarded = infer_identity(request, current_chat="other")
    assert (identity.chat, identity.character, identity.source) == (
        "Forest Party - 2026",
        "Brom",
        IdentitySource.EXPLICIT,
    )
    assert identity.avatar == "Brom.png"
    assert "kvtui" not in forwarded
    assert forwarded == {k: v for k, v in request.items() if k != "kvtui"}
    assert "kvtui" in request  # the caller's body is not mutated


def test_explicit_keys_chat_character_and_avatar_fallback() -> None:
    identity, _ = infer_identity(body("x", kvtui={"chat": "c", "character": "Sera"}))
    assert (identity.chat, identity.character) == ("c", "Sera")
    identity, _ = infer_identity(body("x", kvtui={"avatar": "chars/Brom.png", "type": "swipe"}))
    assert (identity.chat, identity.character) == (UNKNOWN_CHAT, "Brom")
    assert identity.declared_type is GenType.SWIPE
    identity, _ = infer_identity(body("x", kvtui={"character": "A", "type": "bogus"}))
    assert identity.declared_type is None


def test_headers_are_case_insensitive_and_percent_decoded() -> None:
    headers = {"x-kvtui-chat": quote("Лес - 2026"), "X-KVTUI-Character": quote("Серафина")}
    identity, _ = infer_identity(body(STORY + CHAT + "\nSeraphina:"), headers)
    assert (identity.chat, identity.character, identity.source) == (
        "Лес - 2026",
        "Серафина",
        IdentitySource.EXPLICIT,
    )


def test_an_explicit_chat_alone_keeps_the_inferred_character() -> None:
    identity, forwarded = infer_identity(body(STORY + CHAT + "\nSeraphina:", kvtui={"chat": "c"}))
    assert (identity.chat, identity.character) == ("c", "Seraphina")
    assert identity.clue is Clue.PROMPT_TAIL
    assert "kvtui" not in forwarded


# -- SillyTavern inference ---------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        "\nSeraphina:",
        "<|im_end|>\n<|im_start|>assistant\nSeraphina:",
        "[/INST] Seraphina:",
        "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nSeraphina:",
    ],
)
def test_the_prompt_tail_names_the_character(tail: str) -> None:
    identity, _ = infer_identity(body(STORY + CHAT + tail), current_chat="Seraphina - 2026")
    assert (identity.chat, identity.character, identity.clue) == (
        "Seraphina - 2026",
        "Seraphina",
        Clue.PROMPT_TAIL,
    )


def test_in_a_group_the_speaker_is_missing_from_stop() -> None:
    # Instruct "force" mode in a group would name the speaker; a solo-style tail does not.
    prompt = STORY + CHAT + "<|im_end|>\n<|im_start|>assistant\n"
    stop = ["\nAlex:", "\nSeraphina:", "\nLyra:", "<|im_end|>"]
    identity, _ = infer_identity(body(prompt, stop), members=MEMBERS)
    assert (identity.character, identity.clue) == ("Brom", Clue.STOP_STRINGS)


def test_in_a_group_a_tail_naming_a_member_wins() -> None:
    stop = ["\nAlex:", "\nBrom:", "\nLyra:"]
    identity, _ = infer_identity(body(STORY + CHAT + "\nLyra:", stop), members=MEMBERS)
    assert (identity.character, identity.clue) == ("Lyra", Clue.PROMPT_TAIL)


def test_a_one_character_chat_names_its_character_even_on_impersonate() -> None:
    impersonate = body(STORY + CHAT + "\nSeraphina: Rest.\nAlex:", ["\nSeraphina:"])
    identity, _ = infer_identity(impersonate, members=["Seraphina"])
    assert (identity.character, identity.clue) == ("Seraphina", Clue.CHAT_MEMBER)


def test_impersonate_with_known_user_names() -> None:
    impersonate = body(STORY + CHAT + "\nSeraphina: Rest.\nAlex:", ["\nSeraphina:"])
    identity, _ = infer_identity(impersonate, user_names={"Alex"})
    assert (identity.character, identity.clue) == ("Seraphina", Clue.STOP_STRINGS)


def test_group_impersonate_falls_back_to_the_last_member_who_spoke() -> None:
    prompt = STORY + CHAT + "\nBrom: Hmph.\nLyra: *strums*\nAlex:"
    stop = ["\nSeraphina:", "\nBrom:", "\nLyra:"]
    identity, _ = infer_identity(body(prompt, stop), members=MEMBERS, user_names=["Alex"])
    assert (identity.character, identity.clue) == ("Lyra", Clue.LAST_SPEAKER)


@pytest.mark.parametrize(
    "ending",
    [
        "\n[Pause your roleplay. Summarize the most important facts and events so far.]",
        "\nRespond in JSON with the keys title and content:",
    ],
)
def test_a_quiet_prompt_goes_to_the_last_character_who_spoke(ending: str) -> None:
    prompt = STORY + CHAT + "\nSeraphina: You are safe here." + ending
    identity, _ = infer_identity(body(prompt))
    assert (identity.character, identity.clue) == ("Seraphina", Clue.LAST_SPEAKER)


def test_last_speaker_skips_labels_and_unmentioned_names() -> None:
    assert last_speaker(STORY) is None  # "Scenario:" and "Seraphina's personality:" are labels
    assert last_speaker("Intro.\nZed: hi") is None  # never named before its line
    assert last_speaker(STORY + CHAT, exclude={"Alex"}) == "Seraphina"
    assert last_speaker(STORY + CHAT, candidates=["Alex"]) == "Alex"


def test_without_names_the_fingerprint_is_stable_per_prompt_beginning() -> None:
    card = STORY * 4  # a real story string is longer than the fingerprinted beginning
    solo = "<|im_start|>system\n" + card + "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    assert len(solo) > FINGERPRINT_CHARS
    a, _ = infer_identity(body(solo + "<|im_start|>assistant\n", []))
    b, _ = infer_identity(body(solo + "<|im_start|>assistant\nOk<|im_end|>\n" * 9, []))
    other, _ = infer_identity(body("<|im_start|>system\nAnother card.<|im_end|>\n", []))
    assert a.source is IdentitySource.FINGERPRINT
    assert a.character.startswith("unnamed-") and len(a.character) == len("unnamed-") + 8
    assert a.character == b.character == fingerprint(solo)
    assert a.character != other.character


def test_token_id_prompts() -> None:
    ids = list(range(32, 127))
    identity, _ = infer_identity({"prompt": ids})
    assert (identity.character, identity.source) == (fingerprint(ids), IdentitySource.FINGERPRINT)
    identity, _ = infer_identity({"prompt": ids}, members=["Seraphina"])
    assert (identity.character, identity.clue) == ("Seraphina", Clue.CHAT_MEMBER)


# -- chat completions --------------------------------------------------------------------


def test_chat_completions_use_the_assistant_name() -> None:
    messages = [
        {"role": "system", "content": STORY},
        {"role": "assistant", "name": "Seraphina", "content": "*smiles* Welcome."},
        {"role": "user", "content": "Hi!"},
    ]
    identity, _ = infer_identity({"messages": messages})
    assert (identity.character, identity.clue) == ("Seraphina", Clue.MESSAGES)
    prefixed = [messages[0], {"role": "assistant", "content": "Brom: Hmph."}, messages[2]]
    identity, _ = infer_identity({"messages": prefixed})
    assert identity.character == "Brom"
    labelled = [messages[0], {"role": "assistant", "content": "Note: nothing."}, messages[2]]
    identity, _ = infer_identity({"messages": labelled})
    assert identity.source is IdentitySource.FINGERPRINT


def test_chat_completions_in_a_group_use_stop_strings() -> None:
    messages = [{"role": "system", "content": STORY}, {"role": "user", "content": "Hi all"}]
    stop = ["\nAlex:", "\nSeraphina:", "\nBrom:"]
    identity, _ = infer_identity({"messages": messages, "stop": stop}, members=MEMBERS)
    assert (identity.character, identity.clue) == ("Lyra", Clue.STOP_STRINGS)


def test_chat_completions_fingerprint_depends_on_the_first_messages() -> None:
    first = [{"role": "system", "content": "Card A"}, {"role": "user", "content": "Hi"}]
    a, _ = infer_identity({"messages": first})
    b, _ = infer_identity({"messages": first})
    c, _ = infer_identity({"messages": [{"role": "system", "content": "Card B"}]})
    assert a.character == b.character != c.character
    assert a.source is IdentitySource.FINGERPRINT


# -- properties --------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)


@given(
    extra=st.dictionaries(
        st.sampled_from(["prompt", "messages", "stop", "kvtui", "n"]), json_values
    ),
    members=st.lists(st.text(min_size=1, max_size=10), max_size=3),
)
def test_inference_never_fails_and_never_forwards_its_key(
    extra: dict[str, Any], members: list[str]
) -> None:
    identity, forwarded = infer_identity(extra, members=members)
    assert identity.character and identity.chat
    assert "kvtui" not in forwarded
    assert forwarded == {k: v for k, v in extra.items() if k != "kvtui"}


@given(name=st.text(min_size=1, max_size=30).filter(lambda s: s.strip() == s and "\n" not in s))
def test_an_explicit_character_always_wins(name: str) -> None:
    request = body(STORY + CHAT + "\nSeraphina:", kvtui={"character": name, "chat": "c"})
    identity, _ = infer_identity(request, members=MEMBERS)
    assert (identity.character, identity.source) == (name, IdentitySource.EXPLICIT)
