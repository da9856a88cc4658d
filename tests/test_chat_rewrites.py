"""An edit or delete in a chat file is told from a reply or a swipe by what changed, not by when.

The chat index compares each chat file it re-reads with the version it saw before
(:func:`kvtui.sillytavern.chatindex.grew`): messages added, or the newest reply changed (a swipe,
a continue), is growth; a message before it changed or messages removed is a rewrite. A swipe as
the first action after opening a chat that had a reply a few seconds before (switching from
Text to Chat Completion and swiping, in the real-SillyTavern session) is a swipe; an edited
message followed by a swipe of the reply after it is a new turn.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvtui.proxy.chatidentity import identify
from kvtui.proxy.gentype import classify_request
from kvtui.sillytavern.chatindex import ChatIndex, grew
from kvtui.sillytavern.recent import RecentMessage, line_keys
from kvtui.slots import GenType
from tests import st119
from tests.st119 import (
    CHAT_B,
    CHAT_B_MESSAGES,
    GROUP_CHAT,
    GROUP_MESSAGES,
    SERA,
    USER,
    cc_body,
    cc_messages,
    tc_body,
    tc_prompt,
)


def _m(name: str, text: str) -> RecentMessage:
    return RecentMessage(name=name, is_user=name == USER, text=text, keys=line_keys(text))


OLD = (_m(SERA, "Welcome to the glade, traveler."), _m(USER, "Where am I right now?"),
       _m(SERA, "In my glade, deep in the forest."))  # fmt: skip


@pytest.mark.parametrize(
    ("new", "growth"),
    [
        (OLD, True),
        ((*OLD, _m(USER, "Thank you for the help."), _m(SERA, "You are welcome here.")), True),
        ((*OLD[:2], _m(SERA, "Another answer, swiped.")), True),  # the newest reply changed
        ((*OLD[:1], _m(USER, "Where am I, and why?"), OLD[2]), False),  # an edited message
        (OLD[:2], False),  # the last reply deleted
        ((*OLD[:2], _m("Kael", "Not her reply at all.")), False),  # another speaker
    ],
)
def test_growth_or_rewrite(new: tuple[RecentMessage, ...], growth: bool) -> None:
    assert grew(OLD, new, window=8) is growth


def test_a_full_window_that_moved_on_is_growth() -> None:
    full = tuple(_m(SERA if i % 2 else USER, f"message number {i} of the chat") for i in range(8))
    moved = (*full[2:], _m(USER, "and a new one from me"), _m(SERA, "and my answer to it"))
    assert grew(full, moved, window=8)
    assert not grew(full, (*full[:6], _m(USER, "edited: not what I said"), full[7]), window=8)
    # Only the newest would line up after a shift: that is not evidence of growth.
    assert not grew(full, (full[7], *moved[1:]), window=8)


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    return st119.build(tmp_path / "default-user", now=time.time())


def _type_of(body: dict[str, object], index: ChatIndex) -> GenType:
    identity, forwarded = identify(body, None, index)
    result = classify_request(
        forwarded, None, character=identity.character, user_name=USER,
        chat=identity.evidence, prompts=index.state.prompts,
    )  # fmt: skip
    assert result is not None
    return result.gen_type


def test_a_swipe_right_after_a_reply_was_saved_is_a_swipe(user_dir: Path) -> None:
    index = ChatIndex(user_dir)
    index.refresh()
    reply = ("Kael", "*Kael shrugs.* The bridge is an hour away, no more.")
    path = user_dir / "group chats" / f"{GROUP_CHAT}.jsonl"
    st119.write_chat(path, [*GROUP_MESSAGES, reply], group=True, mtime=time.time())
    index.refresh()  # the reply was saved a second ago: the file is fresh, but only grew
    entry = index.chat(GROUP_CHAT)
    assert entry is not None and entry.rewritten is False
    body = cc_body(cc_messages("Kael", GROUP_MESSAGES, group=True))
    assert _type_of(body, index) is GenType.SWIPE


def test_an_edit_then_a_swipe_is_a_new_turn_however_long_ago(user_dir: Path) -> None:
    index = ChatIndex(user_dir)
    index.refresh()
    edited = [*CHAT_B_MESSAGES[:-2], (USER, "Could you show me the way home instead?")]
    path = user_dir / "chats" / SERA / f"{CHAT_B}.jsonl"
    st119.write_chat(path, [*edited, CHAT_B_MESSAGES[-1]], mtime=time.time() - 600)
    index.refresh()
    entry = index.chat(CHAT_B)
    assert entry is not None and entry.rewritten is True
    assert _type_of(tc_body(tc_prompt(SERA, edited), [f"\n{USER}:"]), index) is GenType.NORMAL
