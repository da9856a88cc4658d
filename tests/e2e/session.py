"""The scripted SillyTavern session of the e2e test, and what each generation in it is.

``run_session`` clicks through SillyTavern's page and returns one ``Expected`` per generation
request, in the order the requests reach kvtui: the scenario, the chat (SillyTavern's chat id),
the character (display name), the group (or ``None``) and the generation type.

The group uses the "list" activation strategy so every unmuted member answers in member order
(natural order picks speakers at random); Brann is muted and never speaks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from kvtui.sillytavern import sample
from tests.e2e.page import StPage
from tests.e2e.stack import OLD_SOLO_CHAT_ID

SPEAKERS = ("Seraphina", "Kael", "Mira")  # the group's unmuted members, in member order


@dataclass(frozen=True)
class Expected:
    """What a generation request is for (what kvtui should decide)."""

    scenario: str
    api: str  # "text" | "chat"
    chat: str
    character: str
    group: str | None
    type: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _group_round(st: StPage, scenario: str, api: str, text: str, chat: str) -> list[Expected]:
    st.send(text, replies=len(SPEAKERS))
    return [Expected(scenario, api, chat, who, sample.GROUP_ID, "normal") for who in SPEAKERS]


#: Called right after each chat open with (what was opened, avatar or None, group or None, chat).
OpenHook = Callable[[str, str | None, str | None, str], None]


def _no_hook(what: str, avatar: str | None, group: str | None, chat: str) -> None:
    return None


def run_session(st: StPage, on_open: OpenHook = _no_hook) -> list[Expected]:
    """The whole scripted session (Text Completion, then Chat Completion)."""
    out: list[Expected] = []
    solo = sample.SOLO_CHAT_ID
    sera = "Seraphina"

    def add(scenario: str, api: str, chat: str, type_: str, who: str = sera) -> None:
        out.append(Expected(scenario, api, chat, who, None, type_))

    # -- Text Completion (llama.cpp), one-to-one ------------------------------------------
    st.connect_text_completion()
    opened = st.open_character("Seraphina.png")
    assert opened == solo, opened
    on_open("character", "Seraphina.png", None, solo)
    st.send("*I look around the glade.* Is it always this quiet?")
    add("tc_solo_send", "text", solo, "normal")
    st.swipe()
    add("tc_solo_swipe", "text", solo, "swipe")
    st.continue_()
    add("tc_solo_continue", "text", solo, "continue")
    st.edit_message(-2, "*I look up at the trees.* Is it always this quiet at night?")
    st.regenerate()
    add("tc_solo_edit_regenerate", "text", solo, "regenerate")
    st.impersonate()
    add("tc_solo_impersonate", "text", solo, "impersonate")

    # -- open an existing chat and swipe first ---------------------------------------------
    st.open_chat_from_list(OLD_SOLO_CHAT_ID)
    on_open("chat list", "Seraphina.png", None, OLD_SOLO_CHAT_ID)
    st.swipe()
    add("tc_open_old_swipe_first", "text", OLD_SOLO_CHAT_ID, "swipe")
    st.send("The fire is warm. What is your name?")
    add("tc_old_send", "text", OLD_SOLO_CHAT_ID, "normal")

    # -- group with a muted member ---------------------------------------------------------
    group_chat = st.open_group(sample.GROUP_ID)
    assert group_chat == sample.GROUP_CHAT_ID, group_chat
    on_open("group", None, sample.GROUP_ID, group_chat)
    out += _group_round(st, "tc_group_round", "text", "Who keeps the first watch?", group_chat)

    # -- back to the newer one-to-one chat, swipe first --------------------------------------
    reopened = st.open_character("Seraphina.png")
    on_open("character", "Seraphina.png", None, reopened)
    st.open_chat_from_list(solo)
    on_open("chat list", "Seraphina.png", None, solo)
    st.swipe()
    add("tc_reopen_solo_swipe_first", "text", solo, "swipe")

    # -- Chat Completion (Custom source) -------------------------------------------------------
    st.connect_chat_completion()
    st.send("Tell me about the Shadowfangs.")
    add("cc_solo_send", "chat", solo, "normal")
    st.swipe()
    add("cc_solo_swipe", "chat", solo, "swipe")
    group_chat = st.open_group(sample.GROUP_ID)
    on_open("group", None, sample.GROUP_ID, group_chat)
    out += _group_round(st, "cc_group_round", "chat", "Mira, what is in your satchel?", group_chat)
    return out
