"""The scripted SillyTavern session of the e2e test, and what each generation in it is.

``run_session`` clicks through SillyTavern's page and returns one ``Expected`` per generation
request, in the order the requests reach kvtui: the scenario, the chat (SillyTavern's chat id),
the character (display name), the group (or ``None``) and the generation type.

The group uses the "list" activation strategy so every unmuted member answers in member order
(natural order picks speakers at random); Brann is muted and never speaks.

Each generation belongs to a phase (``PHASES``); ``Stack.mark`` notes llama-server's prompt-token
counter when a phase begins, so the tokens it prefilled per phase compare between a run through
kvtui and one straight to llama-server. The last phase restarts llama-server mid-session.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from kvtui.sillytavern import sample
from tests.e2e.page import StPage
from tests.e2e.stack import OLD_SOLO_CHAT_ID

SPEAKERS = ("Seraphina", "Kael", "Mira")  # the group's unmuted members, in member order

#: The session's phases, in order, with what happens in each (the README's table).
PHASES = {
    "one-to-one": "one-to-one: send, swipe, continue, edit + regenerate, impersonate",
    "switch": "chat switch: open an older chat and swipe first, send, reopen and swipe first",
    "group": "group, Text Completion: open and swipe first, a round (3 speakers, a muted member)",
    "cc one-to-one": "one-to-one, Chat Completion: send, swipe",
    "cc group": "group, Chat Completion: open and swipe first, a round",
    "restart": "llama-server restarted, then a group round (Chat Completion)",
}


@dataclass(frozen=True)
class Expected:
    """What a generation request is for (what kvtui should decide)."""

    scenario: str
    phase: str  # a key of PHASES
    api: str  # "text" | "chat"
    chat: str
    character: str
    group: str | None
    type: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def _group_round(
    st: StPage, scenario: str, phase: str, api: str, text: str, chat: str
) -> list[Expected]:
    st.send(text, replies=len(SPEAKERS))
    return [
        Expected(scenario, phase, api, chat, who, sample.GROUP_ID, "normal") for who in SPEAKERS
    ]


#: Called right after each chat open with (what was opened, avatar or None, group or None, chat).
OpenHook = Callable[[str, str | None, str | None, str], None]


def _no_hook(what: str, avatar: str | None, group: str | None, chat: str) -> None:
    return None


def run_session(st: StPage, on_open: OpenHook = _no_hook) -> list[Expected]:
    """The whole scripted session (Text Completion, then Chat Completion, then a restart)."""
    out: list[Expected] = []
    solo = sample.SOLO_CHAT_ID
    sera = "Seraphina"
    phase = ""

    def begin(name: str) -> None:
        nonlocal phase
        phase = name
        st.stack.mark(name)

    def add(scenario: str, api: str, chat: str, type_: str, who: str = sera) -> None:
        group = sample.GROUP_ID if chat == sample.GROUP_CHAT_ID else None
        out.append(Expected(scenario, phase, api, chat, who, group, type_))

    # -- Text Completion (llama.cpp), one-to-one ------------------------------------------
    begin("one-to-one")
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
    begin("switch")
    st.open_chat_from_list(OLD_SOLO_CHAT_ID)
    on_open("chat list", "Seraphina.png", None, OLD_SOLO_CHAT_ID)
    st.swipe()
    add("tc_open_old_swipe_first", "text", OLD_SOLO_CHAT_ID, "swipe")
    st.send("The fire is warm. What is your name?")
    add("tc_old_send", "text", OLD_SOLO_CHAT_ID, "normal")

    # -- group with a muted member: swipe first (its last reply is Seraphina's), a round -----
    begin("group")
    group_chat = st.open_group(sample.GROUP_ID)
    assert group_chat == sample.GROUP_CHAT_ID, group_chat
    on_open("group", None, sample.GROUP_ID, group_chat)
    st.swipe()
    add("tc_group_swipe_first", "text", group_chat, "swipe", SPEAKERS[0])
    text = "Who keeps the first watch?"
    out += _group_round(st, "tc_group_round", phase, "text", text, group_chat)

    # -- back to the newer one-to-one chat, swipe first --------------------------------------
    begin("switch")
    reopened = st.open_character("Seraphina.png")
    on_open("character", "Seraphina.png", None, reopened)
    st.open_chat_from_list(solo)
    on_open("chat list", "Seraphina.png", None, solo)
    st.swipe()
    add("tc_reopen_solo_swipe_first", "text", solo, "swipe")

    # -- Chat Completion (Custom source) -------------------------------------------------------
    begin("cc one-to-one")
    st.connect_chat_completion()
    st.send("Tell me about the Shadowfangs.")
    add("cc_solo_send", "chat", solo, "normal")
    st.swipe()
    add("cc_solo_swipe", "chat", solo, "swipe")
    begin("cc group")
    group_chat = st.open_group(sample.GROUP_ID)
    on_open("group", None, sample.GROUP_ID, group_chat)
    st.swipe()  # the last reply is the Text Completion round's last speaker's
    add("cc_group_swipe_first", "chat", group_chat, "swipe", SPEAKERS[-1])
    text = "Mira, what is in your satchel?"
    out += _group_round(st, "cc_group_round", phase, "chat", text, group_chat)

    # -- llama-server restarts mid-session (its RAM cache is gone, the saves on disk stay) ---
    begin("restart")
    st.stack.restart_llama()
    st.stack.mark("restart")
    text = "Kael, how far is the bridge now?"
    out += _group_round(st, "restart_cc_group_round", phase, "chat", text, group_chat)
    return out
