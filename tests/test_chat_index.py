"""The chat index (latest messages per chat, stat-cached), the chat decision and the control
prompt templates, on real files in a SillyTavern-shaped directory."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kvtui.proxy.chatidentity import identify
from kvtui.proxy.gentype import classify_request
from kvtui.proxy.identity import IdentitySource
from kvtui.sillytavern.chatindex import ChatIndex
from kvtui.sillytavern.evidence import ChatSource, decide_chat
from kvtui.sillytavern.recent import line_keys, line_variants, read_recent
from kvtui.sillytavern.templates import (
    ControlPrompts,
    nudge_speaker,
    read_controls,
    template_regex,
)
from kvtui.slots import GenType
from tests import st119
from tests.st119 import CHAT_A, CHAT_B, CHAT_B_MESSAGES, GROUP_CHAT, GROUP_MESSAGES, SERA, USER


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    return st119.build(tmp_path / "default-user", now=time.time())


def _index(user_dir: Path) -> ChatIndex:
    index = ChatIndex(user_dir)
    index.refresh()
    return index


# -- reading the end of a chat file ---------------------------------------------------------


def test_read_recent_reads_the_end_of_a_big_file_and_skips_hidden_messages(
    tmp_path: Path,
) -> None:
    path = tmp_path / "big.jsonl"
    long = "x" * 30_000  # a few messages cross the first 64 KiB read
    messages = [(SERA if i % 2 else USER, f"{i} {long}") for i in range(12)]
    st119.write_chat(path, messages, mtime=time.time())
    lines = path.read_text("utf-8").split("\n")
    hidden = json.loads(lines[-1])
    hidden["is_system"] = True  # /hide: not in the prompt
    lines[-1] = json.dumps(hidden)
    path.write_text("\n".join(lines), "utf-8")
    recent = read_recent(path, 8)
    assert [m.text.split()[0] for m in recent] == [str(i) for i in range(3, 11)]
    assert path.stat().st_size > 4 * 64 * 1024
    short = tmp_path / "short.jsonl"
    st119.write_chat(short, messages[:2], mtime=time.time())
    assert [m.is_user for m in read_recent(short, 8)] == [True, False]  # header skipped


def test_line_keys_and_prompt_variants_meet() -> None:
    keys = line_keys("*Nods.*\nThe oldest grove of Eldoria, my home.")
    assert keys == {"The oldest grove of Eldoria, my home."}  # short lines are not keys
    for line in (
        f"{SERA}: The oldest grove of Eldoria, my home.",
        f"{SERA}:{SERA}: The oldest grove of Eldoria, my home.",  # a 1.19 continue
        "The oldest grove of Eldoria, my home.<|im_end|>",  # ChatML: the role is a line above
        "The oldest grove of Eldoria, my home.<|eot_id|>",
        "[INST] The oldest grove of Eldoria, my home. [/INST]",
    ):
        assert keys & set(line_variants(line)), line


# -- refreshing ----------------------------------------------------------------------------


def test_refresh_follows_writes_deletes_and_group_changes(user_dir: Path) -> None:
    index = _index(user_dir)
    assert {c.ref.chat_id for c in index.chats()} == {CHAT_A, CHAT_B, GROUP_CHAT}
    folder = user_dir / "chats" / SERA
    (folder / f"{CHAT_A}.jsonl").unlink()
    index.refresh()
    assert {c.ref.chat_id for c in index.chats()} == {CHAT_B, GROUP_CHAT}
    prompt = st119.tc_prompt(SERA, [*CHAT_B_MESSAGES, (USER, "A brand new question for you?")])
    assert index.match(prompt) == [] or index.match(prompt)[0].chat.ref.chat_id == CHAT_B
    st119.write_chat(
        folder / f"{CHAT_B}.jsonl",
        [*CHAT_B_MESSAGES, (USER, "A brand new question for you?")],
        mtime=time.time(),
    )
    index.refresh()
    best = index.match(prompt)[0]
    assert best.chat.ref.chat_id == CHAT_B and best.unseen == ()
    # A group that no longer lists its chat: the chat is not one SillyTavern can open.
    group_file = user_dir / "groups" / f"{st119.GROUP_ID}.json"
    group = json.loads(group_file.read_text("utf-8"))
    group["chats"], group["chat_id"] = [], ""
    group_file.write_text(json.dumps(group), "utf-8")
    os.utime(group_file, (time.time() + 5, time.time() + 5))
    index.refresh()
    assert GROUP_CHAT not in {c.ref.chat_id for c in index.chats()}


def test_state_is_read_from_settings_cards_and_groups(user_dir: Path) -> None:
    state = _index(user_dir).state
    assert (state.active_character, state.active_group) == (st119.SERA_AVATAR, None)
    assert state.card_chats[st119.SERA_AVATAR] == CHAT_B
    assert state.user_name == USER
    assert state.avatars_named("Kael") == ["Kael.png"]
    assert state.current_chats([st119.SERA_AVATAR]) == {
        CHAT_B: None,
        GROUP_CHAT: st119.GROUP_ID,
    }


# -- the decision --------------------------------------------------------------------------


def test_state_alone_needs_one_current_chat(user_dir: Path) -> None:
    index = _index(user_dir)
    state = index.state
    avatars = [st119.SERA_AVATAR]
    chosen = decide_chat([], state, index.chats(), avatars=avatars)
    assert (chosen.source, chosen.chat_id) == (ChatSource.INFERRED, CHAT_B)  # selected: her
    st119.write_settings(user_dir, active_character=None, active_group=None)
    index.refresh()
    unsure = decide_chat([], index.state, index.chats(), avatars=avatars)
    assert unsure.source is ChatSource.UNSURE and set(unsure.candidates) == {CHAT_B, GROUP_CHAT}
    opened = decide_chat([], index.state, index.chats(), avatars=["Kael.png"], opened=GROUP_CHAT)
    assert opened.chat_id == GROUP_CHAT


def test_a_prompt_missing_a_user_message_is_not_that_chats_present(user_dir: Path) -> None:
    index = _index(user_dir)
    # Chat B without its last two messages (a user message among them): only an older state.
    prompt = st119.tc_prompt(SERA, CHAT_B_MESSAGES[:-2])
    matches = index.match(prompt, [st119.SERA_AVATAR])
    b = next(m for m in matches if m.chat.ref.chat_id == CHAT_B)
    assert not b.plausible and [m.is_user for m in b.unseen] == [True, False]


def test_a_group_swipe_and_a_group_regenerate(user_dir: Path) -> None:
    round_ = [*GROUP_MESSAGES, ("Kael", "*Kael stands.* I will fetch him myself, then."),
              ("Mira", "*Mira giggles.* He will grumble all the way back to camp.")]  # fmt: skip
    path = user_dir / "group chats" / f"{GROUP_CHAT}.jsonl"
    st119.write_chat(path, round_, group=True, mtime=time.time() - 600)
    index = _index(user_dir)
    for speaker, history in (("Mira", round_[:-1]), ("Kael", round_[:-2])):
        body = st119.tc_body(st119.tc_prompt(speaker, history), st119.group_stop(speaker))
        identity, forwarded = identify(body, None, index)
        assert (identity.chat, identity.character) == (GROUP_CHAT, speaker)
        result = classify_request(
            forwarded, None, character=identity.character, chat=identity.evidence
        )
        assert result is not None and result.gen_type is GenType.SWIPE, speaker
    # CC: the nudge names the speaker; Mira's last reply taken back is a swipe too.
    body = st119.cc_body(st119.cc_messages("Mira", round_[:-1], group=True))
    identity, forwarded = identify(body, None, index)
    result = classify_request(forwarded, None, character="Mira", chat=identity.evidence)
    assert identity.chat == GROUP_CHAT and result is not None
    assert result.gen_type is GenType.SWIPE


def test_an_unknown_data_directory_gives_a_fingerprint(tmp_path: Path) -> None:
    index = ChatIndex(tmp_path / "nothing-here")
    index.refresh()
    body = {
        "messages": [{"role": "system", "content": "A card."}, {"role": "user", "content": "x"}]
    }
    identity, _ = identify(body, None, index)
    assert identity.source is IdentitySource.FINGERPRINT
    assert identity.character.startswith("unnamed-")


# -- control prompt templates --------------------------------------------------------------


def test_template_regex_handles_macros_and_whitespace() -> None:
    pattern = template_regex("[Write  the next reply only as {{char}}, for {{user}}.]")
    assert pattern is not None
    m = pattern.fullmatch("[Write the next reply\nonly as Mira, for Alex.]")
    assert m is not None and m.group("char") == "Mira"
    assert template_regex("{{char}}") is None and template_regex("  ") is None


def test_nudge_speaker_prefers_the_template_then_one_named_member() -> None:
    members = ["Серафина", "Kael", "Mira", "Brann"]
    start = {"role": "system", "content": "[Start a new group chat. Group members: Серафина, "
                                          "Kael, Mira, Brann]"}  # fmt: skip
    user = {"role": "user", "content": "Mira, what is in your satchel?"}
    nudge = {"role": "system", "content": "[Write the next reply only as Kael.]"}
    assert nudge_speaker([start, user, nudge], members) == ("Kael", 2)
    assert nudge_speaker([start, user], members) is None  # the user's text is no nudge
    custom = ControlPrompts(group_nudge="")
    loose = {"role": "system", "content": "Brann wakes up and answers."}
    assert nudge_speaker([start, user, loose], members, custom) == ("Brann", 2)
    assert nudge_speaker([start, {"role": "system", "content": "Kael or Mira?"}], members) is None


def test_read_controls_drops_only_the_continue_nudge() -> None:
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hel"}]
    cont = {"role": "system", "content": st119.CONTINUE_NUDGE}
    reading = read_controls([*history, cont])
    assert reading.continuing and reading.messages == tuple(history)
    assert not read_controls([history[0], cont]).continuing  # nothing to continue
    assert read_controls(history).messages == tuple(history)
