"""Chat identity from evidence, on request bodies shaped like SillyTavern 1.19's, against a
SillyTavern-shaped data directory (real files: cards, chats, a group, settings.json)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvtui.proxy.chatidentity import identify, refresh_and_identify
from kvtui.proxy.gentype import classify_request
from kvtui.proxy.identity import UNKNOWN_CHAT, Clue, IdentitySource
from kvtui.sillytavern.chatindex import ChatIndex
from kvtui.slots import GenType
from tests import st119
from tests.st119 import (
    CHAT_A,
    CHAT_A_MESSAGES,
    CHAT_B,
    CHAT_B_MESSAGES,
    GROUP_CHAT,
    GROUP_ID,
    GROUP_MESSAGES,
    SERA,
    USER,
    cc_body,
    cc_continue,
    cc_messages,
    group_stop,
    tc_body,
    tc_continue,
    tc_impersonate,
    tc_prompt,
)


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    return st119.build(tmp_path / "default-user", now=time.time())


@pytest.fixture
def index(user_dir: Path) -> ChatIndex:
    index = ChatIndex(user_dir)
    index.refresh()
    return index


def _classify(body: dict[str, object], index: ChatIndex) -> tuple[str, str, GenType, str]:
    identity, forwarded = identify(body, None, index)
    result = classify_request(
        forwarded,
        None,  # no earlier turn of this (chat, character) seen: as right after a chat open
        character=identity.character,
        user_name=USER,
        chat=identity.evidence,
        prompts=index.state.prompts,
    )
    assert result is not None
    return identity.chat, identity.character, result.gen_type, identity.source


# -- Text Completion -------------------------------------------------------------------------


def test_tc_one_to_one_new_turn_is_its_chat(user_dir: Path, index: ChatIndex) -> None:
    messages = [*CHAT_B_MESSAGES, (USER, "Thank you. Will you walk with me to the brook?")]
    st119.write_chat(user_dir / "chats" / SERA / f"{CHAT_B}.jsonl", messages, mtime=time.time())
    index.refresh()
    got = _classify(tc_body(tc_prompt(SERA, messages), [f"\n{USER}:"]), index)
    assert got == (CHAT_B, SERA, GenType.NORMAL, IdentitySource.EVIDENCE)


def test_open_chat_b_then_swipe_first_is_chat_b_and_a_swipe(index: ChatIndex) -> None:
    """Chat A was written last; the user OPENS chat B (no chat file is written) and swipes
    SillyTavern's last reply: the prompt is B without that reply."""
    prompt = tc_prompt(SERA, CHAT_B_MESSAGES[:-1])
    identity, _ = identify(tc_body(prompt, [f"\n{USER}:"]), None, index)
    assert identity.chat == CHAT_B and identity.chat != CHAT_A
    assert identity.sure and identity.confidence >= 0.7
    got = _classify(tc_body(prompt, [f"\n{USER}:"]), index)
    assert got == (CHAT_B, SERA, GenType.SWIPE, IdentitySource.EVIDENCE)


def test_branches_that_hold_the_same_messages_are_told_by_the_current_chat(
    user_dir: Path, index: ChatIndex
) -> None:
    # A is a branch of B: the same messages but B's last reply. The card says B is current.
    st119.write_chat(
        user_dir / "chats" / SERA / f"{CHAT_A}.jsonl",
        [*CHAT_B_MESSAGES[:-1], (SERA, "*She shakes her head.* Not tomorrow. Rest first.")],
        mtime=time.time(),
    )
    index.refresh()
    prompt = tc_prompt(SERA, CHAT_B_MESSAGES[:-1])
    identity, _ = identify(tc_body(prompt, [f"\n{USER}:"]), None, index)
    assert (identity.chat, identity.source) == (CHAT_B, IdentitySource.EVIDENCE)
    assert set(identity.candidates) == set()  # decided
    # Once the card names neither (another chat is current), kvtui says it cannot tell.
    st119.write_card_chat(user_dir, st119.SERA_AVATAR, f"{SERA} - 2026-04-01@00h00m00s000ms")
    index.refresh()
    identity, _ = identify(tc_body(prompt, [f"\n{USER}:"]), None, index)
    assert identity.source is IdentitySource.UNSURE and not identity.sure
    assert identity.chat == UNKNOWN_CHAT
    assert set(identity.candidates) == {CHAT_A, CHAT_B}
    assert identity.character == SERA  # the character is still known


def test_tc_group_with_a_muted_member(index: ChatIndex) -> None:
    body = tc_body(tc_prompt("Kael", GROUP_MESSAGES), group_stop("Kael"))
    assert "\nBrann:" in body["stop"]
    identity, _ = identify(body, None, index)
    assert (identity.chat, identity.character, identity.group) == (GROUP_CHAT, "Kael", GROUP_ID)
    assert identity.clue is Clue.PROMPT_TAIL and identity.source is IdentitySource.EVIDENCE
    assert _classify(body, index)[2] is GenType.NORMAL


def test_tc_continue_with_the_re_rendered_name(index: ChatIndex) -> None:
    prompt = tc_continue(SERA, CHAT_B_MESSAGES)
    assert f"\n{SERA}:{SERA}: " in prompt
    got = _classify(tc_body(prompt, [f"\n{USER}:"]), index)
    assert got == (CHAT_B, SERA, GenType.CONTINUE, IdentitySource.EVIDENCE)


def test_tc_continue_after_a_seen_turn_is_a_continue_not_quiet(index: ChatIndex) -> None:
    from kvtui.proxy.gentype import classify_generation, remember

    normal = tc_prompt(SERA, CHAT_B_MESSAGES[:-1])
    first = classify_generation(normal, stop=[f"\n{USER}:"], character=SERA)
    memory = remember(None, first, normal, " " + CHAT_B_MESSAGES[-1][1][:30])
    again = classify_generation(
        tc_continue(SERA, [*CHAT_B_MESSAGES[:-1], (SERA, CHAT_B_MESSAGES[-1][1][:30])]),
        previous=memory,
        stop=[f"\n{USER}:"],
        character=SERA,
    )
    assert again.gen_type is GenType.CONTINUE and not again.counts_message


def test_tc_impersonate(index: ChatIndex) -> None:
    body = tc_body(tc_impersonate(SERA, CHAT_B_MESSAGES), [f"\n{SERA}:"])
    got = _classify(body, index)
    assert got == (CHAT_B, SERA, GenType.IMPERSONATE, IdentitySource.EVIDENCE)


def test_an_edited_user_message_then_regenerate_is_a_new_turn(
    user_dir: Path, index: ChatIndex
) -> None:
    edited = [*CHAT_B_MESSAGES[:-2], (USER, "Could you show me the way home instead?")]
    # The edit is saved at once; the reply it replaces is still in the file.
    st119.write_chat(
        user_dir / "chats" / SERA / f"{CHAT_B}.jsonl",
        [*edited, CHAT_B_MESSAGES[-1]],
        mtime=time.time(),
    )
    index.refresh()
    got = _classify(tc_body(tc_prompt(SERA, edited), [f"\n{USER}:"]), index)
    assert got == (CHAT_B, SERA, GenType.NORMAL, IdentitySource.EVIDENCE)


def test_a_quiet_prompt_is_quiet(index: ChatIndex) -> None:
    prompt = tc_prompt(SERA, CHAT_B_MESSAGES).removesuffix(f"\n{SERA}:")
    prompt += "\n[Pause your roleplay. Summarize the most important facts and events so far.]"
    got = _classify(tc_body(prompt, [f"\n{USER}:"]), index)
    assert got[0] == CHAT_B and got[2] is GenType.QUIET


# -- Chat Completion -------------------------------------------------------------------------


def test_cc_one_to_one_has_no_name_and_the_chat_gives_it(index: ChatIndex) -> None:
    body = cc_body(cc_messages(SERA, CHAT_B_MESSAGES[:-1], group=False))
    got = _classify(body, index)
    assert got == (CHAT_B, SERA, GenType.SWIPE, IdentitySource.EVIDENCE)
    identity, _ = identify(body, None, index)
    assert identity.clue is Clue.CHAT and identity.avatar == st119.SERA_AVATAR


def test_cc_group_speaker_is_the_one_the_nudge_names(index: ChatIndex) -> None:
    for speaker in ("Kael", "Mira", SERA):
        body = cc_body(cc_messages(speaker, GROUP_MESSAGES, group=True))
        identity, _ = identify(body, None, index)
        assert (identity.chat, identity.character) == (GROUP_CHAT, speaker)
        assert identity.clue is Clue.GROUP_NUDGE


def test_cc_group_nudge_from_an_edited_template(user_dir: Path, index: ChatIndex) -> None:
    import json

    settings = json.loads((user_dir / "settings.json").read_text("utf-8"))
    settings["oai_settings"]["group_nudge_prompt"] = "({{char}} speaks next, not {{user}})"
    (user_dir / "settings.json").write_text(json.dumps(settings), "utf-8")
    index.refresh()
    messages = cc_messages("Mira", GROUP_MESSAGES, group=True, nudge=False)
    messages.append({"role": "system", "content": f"(Mira speaks next, not {USER})"})
    identity, _ = identify(cc_body(messages), None, index)
    assert (identity.character, identity.clue) == ("Mira", Clue.GROUP_NUDGE)
    # Not the template: a system message naming exactly one member still does.
    messages[-1] = {"role": "system", "content": "Now Kael answers."}
    identity, _ = identify(cc_body(messages), None, index)
    assert (identity.character, identity.clue) == ("Kael", Clue.GROUP_NUDGE)


def test_cc_continue_one_to_one_and_group(user_dir: Path, index: ChatIndex) -> None:
    got = _classify(cc_body(cc_continue(SERA, CHAT_B_MESSAGES, group=False)), index)
    assert got == (CHAT_B, SERA, GenType.CONTINUE, IdentitySource.EVIDENCE)
    messages = [*GROUP_MESSAGES, ("Kael", "*Kael stands.* I will fetch him myself.")]
    path = user_dir / "group chats" / f"{GROUP_CHAT}.jsonl"
    st119.write_chat(path, messages, group=True, mtime=time.time() - 120)
    index.refresh()
    got = _classify(cc_body(cc_continue("Kael", messages, group=True)), index)
    assert got == (GROUP_CHAT, "Kael", GenType.CONTINUE, IdentitySource.EVIDENCE)


def test_cc_impersonate(index: ChatIndex) -> None:
    messages = cc_messages(SERA, CHAT_B_MESSAGES, group=False)
    messages.append({"role": "system", "content": st119_impersonation()})
    got = _classify(cc_body(messages), index)
    assert got[:3] == (CHAT_B, SERA, GenType.IMPERSONATE)


def st119_impersonation() -> str:
    from kvtui.sillytavern.templates import DEFAULT_IMPERSONATION

    return DEFAULT_IMPERSONATION.replace("{{user}}", USER).replace("{{char}}", SERA)


# -- state only, and the extension ----------------------------------------------------------


def test_without_content_evidence_the_state_decides_weakly(index: ChatIndex) -> None:
    prompt = st119.story(SERA) + "***\n" + f"{USER}: hi\n{SERA}:"
    identity, _ = identify(tc_body(prompt, [f"\n{USER}:"]), None, index)
    assert (identity.chat, identity.source) == (CHAT_B, IdentitySource.INFERRED)
    assert identity.confidence == 0.5


def test_the_extension_object_is_exact(index: ChatIndex) -> None:
    body = tc_body(tc_prompt(SERA, CHAT_A_MESSAGES), [f"\n{USER}:"])
    body["kvtui"] = {
        "chat": CHAT_B, "character": SERA, "avatar": st119.SERA_AVATAR, "group": None,
        "type": "swipe", "source": "extension", "version": 1,
    }  # fmt: skip
    identity, forwarded = identify(body, None, index)
    assert (identity.chat, identity.source, identity.declared_type) == (
        CHAT_B,
        IdentitySource.EXTENSION,
        GenType.SWIPE,
    )
    assert "kvtui" not in forwarded


def test_a_long_prompt_is_matched_by_its_end(index: ChatIndex) -> None:
    filler = [(USER if i % 2 else SERA, f"Line {i} of a chat in the woods.") for i in range(700)]
    prompt = tc_prompt(SERA, filler + CHAT_B_MESSAGES)
    assert len(prompt) > 25_000
    body = tc_body(prompt, [f"\n{USER}:"])
    identity, _ = identify(body, None, index)
    assert identity.chat == CHAT_B


def test_the_decision_is_loggable_and_one_call_refreshes(user_dir: Path) -> None:
    index = ChatIndex(user_dir)  # never refreshed by hand
    prompt = tc_prompt(SERA, CHAT_B_MESSAGES[:-1])
    identity, _ = refresh_and_identify(index, tc_body(prompt, [f"\n{USER}:"]), None)
    fields = identity.log_fields()
    assert (fields["chat"], fields["character"], fields["source"]) == (CHAT_B, SERA, "evidence")
    assert identity.describe().startswith(f'{SERA} in "{CHAT_B}" (evidence, 0.9')
    st119.write_card_chat(user_dir, st119.SERA_AVATAR, CHAT_A)  # A branch that matches as well
    st119.write_chat(
        user_dir / "chats" / SERA / f"{CHAT_A}.jsonl", CHAT_B_MESSAGES, mtime=time.time() - 5
    )
    st119.write_card_chat(user_dir, st119.SERA_AVATAR, "another chat")
    unsure, _ = refresh_and_identify(index, tc_body(prompt, [f"\n{USER}:"]), None)
    assert unsure.log_fields()["chat"] is None and unsure.log_fields()["source"] == "unsure"
    assert "one of" in unsure.describe()


def test_a_stale_remembered_turn_does_not_hide_a_swipe_after_an_open(index: ChatIndex) -> None:
    """kvtui remembers chat B from an earlier session (two messages ago); since then B grew
    without kvtui. Opened again, the first action is a swipe: the chat file says so."""
    from kvtui.proxy.gentype import classify_generation, remember

    old = tc_prompt(SERA, CHAT_B_MESSAGES[:2])
    memory = remember(None, classify_generation(old, character=SERA), old, "")
    body = tc_body(tc_prompt(SERA, CHAT_B_MESSAGES[:-1]), [f"\n{USER}:"])
    identity, forwarded = identify(body, None, index)
    plain = classify_request(forwarded, memory, character=SERA, user_name=USER)
    assert plain is not None and plain.gen_type is GenType.NORMAL  # the memory alone: wrong
    result = classify_request(
        forwarded, memory, character=SERA, user_name=USER, chat=identity.evidence
    )
    assert result is not None and result.gen_type is GenType.SWIPE
    assert not result.counts_message
