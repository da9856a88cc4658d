"""A SillyTavern-shaped data directory and request bodies the way SillyTavern 1.19 sends them.

Text Completion prompts follow ``public/script.js`` (non-instruct, "Default" context): the story
string, ``***``, one ``Name: text`` line per visible message, the last line's newline dropped,
then ``\\nName:``; a continue keeps that tail and appends the message re-rendered with its name
(``…\\nСерафина:Серафина: <reply>``). Chat Completion messages follow
``public/scripts/openai.js``: system prompts, ``[Start a new Chat]``, the history (non-user
messages prefixed ``Name: `` in groups), the group nudge last, and for a continue the message
being continued then the continue nudge.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kvtui.sillytavern.cards import build_card_json, write_card_png

USER = "Alex"
SERA = "Серафина"
SERA_AVATAR = "Серафина.png"
CHAT_A = f"{SERA} - 2026-05-01@10h00m00s000ms"
CHAT_B = f"{SERA} - 2026-05-02@11h00m00s000ms"
GROUP_ID = "1777824131004"
GROUP_CHAT = "2026-05-03@19h02m11s004ms"
MEMBERS = ("Серафина.png", "Kael.png", "Mira.png", "Brann.png")
MUTED = ("Brann.png",)
CONTINUE_NUDGE = "[Continue your last message without repeating its original content.]"
GREETING = "*Серафина kneels beside you and smiles.* You're safe now, traveler."

CARDS = {
    SERA: "A gentle forest guardian who heals travelers lost in the Eldoria woods.",
    "Kael": "A quiet ranger with a scarred cheek and a long bow.",
    "Mira": "A cheerful herbalist with a satchel full of potions.",
    "Brann": "A stout dwarf blacksmith who snores loudly.",
}

Msg = tuple[str, str]  # (speaker, text)

CHAT_A_MESSAGES: list[Msg] = [
    (SERA, GREETING),
    (USER, "*I sit up slowly.* Where am I? My head hurts."),
    (SERA, "*She touches your forehead.* In my glade, deep in the Eldoria woods."),
    (USER, "Shadowfangs? I remember nothing after the river."),
    (SERA, "*Her eyes soften.* Their bite clouds the mind. Drink this tea, it helps."),
]
CHAT_B_MESSAGES: list[Msg] = [
    (SERA, GREETING),
    (USER, "What is this place? It smells of moss and rain."),
    (SERA, "*She laughs softly.* The oldest grove of Eldoria, and my home for ages."),
    (USER, "Can you show me the way back to the village tomorrow?"),
    (SERA, "*She nods and points east.* At dawn, when the mist lifts from the brook."),
]
GROUP_MESSAGES: list[Msg] = [
    (SERA, "*Серафина lights a small lantern.* Welcome to our camp, traveler."),
    (USER, "Thank you. Are we all ready for tomorrow?"),
    ("Kael", "*Kael nods.* The old bridge is two hours east. We leave at dawn."),
    ("Mira", "*Mira grins.* I packed healing tea for everyone. Even Brann."),
    (USER, "Where is Brann, anyway? I have not seen him since noon."),
]


def _line(speaker: str, text: str, group: bool, when: int) -> dict[str, Any]:
    if speaker == USER:
        return {"name": USER, "is_user": True, "is_system": False,
                "send_date": f"2026-05-03T15:{when:02d}:10.512Z", "mes": text,
                "extra": {"isSmallSys": False},
                "force_avatar": "/thumbnail?type=persona&file=user-default.png"}  # fmt: skip
    line: dict[str, Any] = {"name": speaker, "is_user": False,
                            "send_date": f"2026-05-03T15:{when:02d}:18.004Z",
                            "extra": {"api": "llamacpp", "model": "nemo"}, "mes": text,
                            "swipe_id": 0, "swipes": [text]}  # fmt: skip
    if group:
        avatar = f"{speaker}.png"
        line.update(original_avatar=avatar, force_avatar=f"/thumbnail?type=avatar&file={avatar}")
    return line


def write_chat(path: Path, messages: list[Msg], *, group: bool = False, mtime: float) -> None:
    header = {"chat_metadata": {"integrity": "x", "tainted": True},
              "user_name": "unused", "character_name": "unused"}  # fmt: skip
    lines = [header, *(_line(s, t, group, i) for i, (s, t) in enumerate(messages))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(x, ensure_ascii=False) for x in lines), "utf-8")
    os.utime(path, (mtime, mtime))


def write_card_chat(user_dir: Path, avatar: str, chat: str) -> None:
    name = avatar.removesuffix(".png")
    write_card_png(
        user_dir / "characters" / avatar,
        build_card_json(name, description=CARDS[name], first_mes=GREETING, chat=chat),
    )


def write_settings(
    user_dir: Path, *, active_character: str | None, active_group: str | None
) -> None:
    settings = {
        "username": USER, "user_avatar": "user-default.png",
        "active_character": active_character, "active_group": active_group,
        "main_api": "textgenerationwebui",
        "power_user": {"personas": {"user-default.png": USER}},
        "oai_settings": {"group_nudge_prompt": "[Write the next reply only as {{char}}.]",
                         "continue_nudge_prompt": CONTINUE_NUDGE},
    }  # fmt: skip
    (user_dir / "settings.json").write_text(json.dumps(settings, indent=4), "utf-8")


def build(user_dir: Path, *, now: float) -> Path:
    """Серафина with chats A (written last) and B (current on her card: just opened), and the
    group "Forest Party" (Серафина, Kael, Mira, muted Brann). Selected: Серафина."""
    (user_dir / "characters").mkdir(parents=True)
    for name in CARDS:
        avatar = f"{name}.png"
        write_card_chat(user_dir, avatar, CHAT_B if name == SERA else f"{name} - 2026-05-01")
    folder = user_dir / "chats" / SERA
    write_chat(folder / f"{CHAT_A}.jsonl", CHAT_A_MESSAGES, mtime=now - 60)
    write_chat(folder / f"{CHAT_B}.jsonl", CHAT_B_MESSAGES, mtime=now - 3600)
    write_chat(
        user_dir / "group chats" / f"{GROUP_CHAT}.jsonl",
        GROUP_MESSAGES,
        group=True,
        mtime=now - 7200,
    )
    (user_dir / "groups").mkdir()
    group = {"id": GROUP_ID, "name": "Forest Party", "members": list(MEMBERS),
             "disabled_members": list(MUTED), "chat_id": GROUP_CHAT, "chats": [GROUP_CHAT],
             "generation_mode": 0}  # fmt: skip
    (user_dir / "groups" / f"{GROUP_ID}.json").write_text(json.dumps(group, indent=4), "utf-8")
    write_settings(user_dir, active_character=SERA_AVATAR, active_group=None)
    return user_dir


# -- Text Completion ------------------------------------------------------------------------


def story(name: str) -> str:
    return f"{CARDS[name]}\n{name}'s personality: kind\nScenario: {USER} wakes up in the glade.\n"


def tc_history(speaker: str, messages: list[Msg]) -> str:
    return story(speaker) + "***\n" + "".join(f"{s}: {t}\n" for s, t in messages)


def tc_prompt(speaker: str, messages: list[Msg]) -> str:
    """A reply request: the last line's newline dropped, then ``\\nSpeaker:``."""
    return tc_history(speaker, messages).removesuffix("\n") + f"\n{speaker}:"


def tc_continue(speaker: str, messages: list[Msg]) -> str:
    """SillyTavern 1.19's continue of the last message (by ``speaker``)."""
    *before, (who, text) = messages
    return tc_history(speaker, before) + f"{speaker}:{who}: {text}"


def tc_impersonate(speaker: str, messages: list[Msg]) -> str:
    return tc_history(speaker, messages).removesuffix("\n") + f"\n{USER}:"


def tc_body(prompt: str, stop: list[str]) -> dict[str, Any]:
    return {
        "prompt": prompt, "model": "", "max_new_tokens": 300, "max_tokens": 300,
        "temperature": 0.7, "top_p": 0.5, "min_p": 0, "repetition_penalty": 1.2, "top_k": 40,
        "add_bos_token": True, "stopping_strings": stop, "stop": stop,
        "truncation_length": 8192, "ban_eos_token": False, "skip_special_tokens": True,
        "api_type": "llamacpp", "api_server": "http://127.0.0.1:8081", "n": 1,
        "n_predict": 300, "cache_prompt": True, "dry_sequence_breakers": ["\n", ":", "\"", "*"],
        "stream": True,
    }  # fmt: skip


def group_stop(speaker: str) -> list[str]:
    others = [m.removesuffix(".png") for m in MEMBERS if m.removesuffix(".png") != speaker]
    return [f"\n{USER}:", *(f"\n{o}:" for o in others), "\n***"]


# -- Chat Completion ------------------------------------------------------------------------


def cc_messages(
    speaker: str, messages: list[Msg], *, group: bool, nudge: bool = True
) -> list[dict[str, str]]:
    between = "" if group else speaker
    out = [
        {"role": "system", "content": f"Write {speaker}'s next reply in a fictional chat "
                                      f"between {between} and {USER}."},
        {"role": "system", "content": CARDS[speaker]},
        {"role": "system", "content": "[Start a new group chat. Group members: Серафина, Kael, "
                                      "Mira, Brann]" if group else "[Start a new Chat]"},
    ]  # fmt: skip
    for who, text in messages:
        role = "user" if who == USER else "assistant"
        out.append({"role": role, "content": f"{who}: {text}" if group and who != USER else text})
    if group and nudge:
        out.append({"role": "system", "content": f"[Write the next reply only as {speaker}.]"})
    return out


def cc_continue(speaker: str, messages: list[Msg], *, group: bool) -> list[dict[str, str]]:
    *before, (who, text) = messages
    out = cc_messages(speaker, before, group=group)
    content = f"{who}: {text}" if group else text
    out.append({"role": "assistant", "content": content + " "})  # continue_postfix: a space
    out.append({"role": "system", "content": CONTINUE_NUDGE})
    return out


def cc_body(messages: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "messages": messages, "model": "nemo", "temperature": 1, "frequency_penalty": 0,
        "presence_penalty": 0, "top_p": 1, "max_tokens": 300, "stream": True,
        "chat_completion_source": "custom", "custom_url": "http://127.0.0.1:8081/v1",
    }  # fmt: skip
