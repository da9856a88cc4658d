"""The sample SillyTavern user directory that ships with kvtui (used by ``kvtui demo``).

``build_sample`` writes it in SillyTavern's real on-disk formats: four character cards (PNG with
``chara`` and ``ccv3`` chunks), a 1:1 chat with Seraphina, and the group "Forest Party"
(Seraphina, Kael, Mira and the muted Brann) with its chat. The same files are committed under
``kvtui/sillytavern/sample/default-user/`` as package data; a test keeps them byte-identical to
what ``build_sample`` writes. Texts are short printable ASCII so that the demo's tiny model (about
one token per character, 1024 tokens per slot) can take a whole assembled prompt.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from kvtui.sillytavern.cards import build_card_json, write_card_png

SAMPLE_DIR = Path(__file__).parent / "sample" / "default-user"
USER_NAME = "Alex"
SOLO_CHAT_ID = "Seraphina - 2026-05-03@18h45m46s123ms"
GROUP_ID = "1777824131004"
GROUP_NAME = "Forest Party"
GROUP_CHAT_ID = "2026-05-03@19h02m11s004ms"
GROUP_MEMBERS = ("Seraphina.png", "Kael.png", "Mira.png", "Brann.png")
MUTED_MEMBERS = ("Brann.png",)
MODEL = "Mistral-Nemo-12B-Q5_K_M.gguf"

_SCENARIO = "The Forest Party camps at the edge of the Eldoria woods before a journey."
_CARDS: dict[str, dict[str, Any]] = {
    "Seraphina": {
        "description": "{{char}} is a gentle forest guardian with pink hair and amber eyes. "
        "She heals travelers lost in the Eldoria woods.",
        "personality": "kind, calm, protective, a little playful",
        "scenario": "{{user}} wakes up in {{char}}'s glade after a fall in the dark forest.",
        "first_mes": "*Seraphina kneels beside you and smiles.* You're safe now, traveler. "
        "The forest brought you to my glade.",
        "alternate_greetings": [
            "*Soft light fills the glade.* Ah, you're awake. Rest; the night is not over yet."
        ],
        "mes_example": "<START>\n{{user}}: Who are you?\n"
        "{{char}}: *She tilts her head.* I am Seraphina, keeper of this glade.",
        "chat": SOLO_CHAT_ID,
        "world": "Eldoria",
    },
    "Kael": {
        "description": "{{char}} is a quiet ranger with a scarred cheek and a long bow. "
        "He scouts ahead and trusts few people.",
        "personality": "brave, blunt, loyal",
        "scenario": _SCENARIO,
        "first_mes": "*Kael checks his bowstring.* We move at first light. Stay close.",
        "chat": "Kael - 2026-05-02@21h10m05s310ms",
    },
    "Mira": {
        "description": "{{char}} is a cheerful herbalist with a satchel full of potions "
        "and a habit of talking to plants.",
        "personality": "curious, warm, chatty",
        "scenario": _SCENARIO,
        "first_mes": "*Mira waves a bundle of herbs.* Good news! I found moonleaf by the river.",
        "chat": "Mira - 2026-05-02@21h12m40s877ms",
    },
    "Brann": {
        "description": "{{char}} is a stout dwarf blacksmith with a braided red beard "
        "and a heavy hammer. He snores loudly.",
        "personality": "gruff, honest, sleepy",
        "scenario": _SCENARIO,
        "first_mes": "*Brann yawns.* Wake me when there is breakfast.",
        "chat": "Brann - 2026-05-02@21h15m02s046ms",
    },
}

_START = datetime(2026, 5, 3, 15, 45, 46, 123000, tzinfo=UTC)  # 18:45:46.123 at UTC+3
_GROUP_START = datetime(2026, 5, 3, 16, 2, 11, 4000, tzinfo=UTC)


class _Line(NamedTuple):
    """One sample message: who, seconds after the chat started, text, group batch, alternates."""

    speaker: str
    at: float
    text: str
    gen_id: int | None = None
    alternates: tuple[str, ...] = ()


_SOLO = [
    _Line(
        "Seraphina",
        0.2,
        _CARDS["Seraphina"]["first_mes"],
        alternates=tuple(_CARDS["Seraphina"]["alternate_greetings"]),
    ),
    _Line(USER_NAME, 24.4, "*I sit up slowly.* Where am I? My head hurts."),
    _Line(
        "Seraphina",
        31.9,
        "*She touches your forehead.* In my glade, deep in the Eldoria woods. "
        "Shadowfangs chased you here.",
    ),
    _Line(USER_NAME, 95.0, "Shadowfangs? I remember nothing after the river."),
    _Line(
        "Seraphina",
        104.6,
        "*Her eyes soften.* Their bite clouds the mind. Your memories return by nightfall. "
        "Drink this tea.",
        alternates=("*She sighs.* That is their curse. Do not worry, it fades.",),
    ),
    _Line(USER_NAME, 370.3, "*I take the cup.* Thank you. Why are you helping me?"),
]
_GROUP = [
    _Line(
        "Seraphina",
        0.3,
        "*Seraphina lights a small lantern.* Welcome to our camp, traveler. Sit by the fire.",
    ),
    _Line(USER_NAME, 41.2, "Thank you. Are we all ready for tomorrow?"),
    _Line(
        "Kael",
        48.8,
        "*Kael nods.* The old bridge is two hours east. We leave at dawn.",
        gen_id=1777824172301,
    ),
    _Line(
        "Mira",
        55.1,
        "*Mira grins.* I packed healing tea for everyone. Even Brann.",
        gen_id=1777824172301,
    ),
    _Line(USER_NAME, 120.7, "Where is Brann, anyway?"),
    _Line(
        "Seraphina",
        128.4,
        "*She points at a snoring shape by the fire.* Asleep, as always. Let him rest.",
        gen_id=1777824251801,
    ),
]


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _message(start: datetime, line: _Line, group: bool) -> dict[str, Any]:
    """One message line in the shape SillyTavern 1.18 saves it."""
    speaker, offset, text, gen_id, alternates = line
    sent = start + timedelta(seconds=offset)
    if speaker == USER_NAME:
        return {
            "name": USER_NAME, "is_user": True, "is_system": False, "send_date": _iso(sent),
            "mes": text, "extra": {"isSmallSys": False},
            "force_avatar": "/thumbnail?type=persona&file=user-default.png",
        }  # fmt: skip
    greeting = offset < 1  # added when the chat was created: no generation fields
    began = sent - timedelta(seconds=7.4)
    extra: dict[str, Any] = {} if greeting else {
        "api": "llamacpp", "model": MODEL, "reasoning": "", "reasoning_duration": None,
        "reasoning_signature": None, "token_count": len(text) // 4,
    }  # fmt: skip
    if gen_id is not None:
        extra["gen_id"] = gen_id
    message: dict[str, Any] = (
        {"name": speaker, "is_user": False, "is_system": False, "send_date": _iso(sent),
         "mes": text, "extra": extra}
        if greeting else
        {"name": speaker, "is_user": False, "send_date": _iso(sent), "extra": extra,
         "mes": text, "title": "", "gen_started": _iso(began), "gen_finished": _iso(sent)}
    )  # fmt: skip
    if group:
        message["force_avatar"] = f"/thumbnail?type=avatar&file={speaker}.png"
        message["original_avatar"] = f"{speaker}.png"
    if greeting and not alternates:
        return message
    swipes = [text, *alternates]
    info = {"send_date": _iso(sent), "gen_started": _iso(began), "gen_finished": _iso(sent),
            "extra": extra}  # fmt: skip
    message.update(swipe_id=0, swipes=swipes, swipe_info=[] if greeting else [info] * len(swipes))
    return message


def _header(integrity: str, last_in_context: int) -> dict[str, Any]:
    return {
        "chat_metadata": {
            "integrity": integrity, "tainted": True, "note_prompt": "", "note_interval": 1,
            "note_depth": 4, "note_position": 1,
            "timedWorldInfo": {"sticky": {}, "cooldown": {}},
            "lastInContextMessageId": last_in_context,
        },
        "user_name": "unused", "character_name": "unused",
    }  # fmt: skip


def _write_jsonl(path: Path, lines: list[dict[str, Any]]) -> None:
    text = "\n".join(json.dumps(line, ensure_ascii=False, separators=(",", ":")) for line in lines)
    path.write_bytes(text.encode("utf-8"))  # joined with \n, no trailing newline, like ST


def _group_json() -> dict[str, Any]:
    return {
        "id": GROUP_ID, "name": GROUP_NAME, "members": list(GROUP_MEMBERS),
        "avatar_url": "img/ai4.png", "allow_self_responses": False, "activation_strategy": 0,
        "generation_mode": 0, "disabled_members": list(MUTED_MEMBERS), "fav": False,
        "chat_id": GROUP_CHAT_ID, "chats": [GROUP_CHAT_ID], "auto_mode_delay": 5,
        "generation_mode_join_prefix": "", "generation_mode_join_suffix": "",
        "hideMutedSprites": False, "date_added": 1777824131010,
        "create_date": "2026-05-03T16:02:11.010Z", "date_last_chat": 1777824259404,
        "chat_size": 3072,
    }  # fmt: skip


def _settings_json() -> dict[str, Any]:
    return {
        "username": USER_NAME, "user_avatar": "user-default.png", "active_character": None,
        "active_group": GROUP_ID, "main_api": "textgenerationwebui",
        "textgenerationwebui_settings": {
            "type": "llamacpp", "server_urls": {"llamacpp": "http://127.0.0.1:8081"},
        },
        "power_user": {"personas": {"user-default.png": USER_NAME}, "default_persona": None},
    }  # fmt: skip


def _chat_times() -> dict[Path, float]:
    """Each sample chat file (relative path) and the epoch time of its last message."""
    return {
        Path("chats", "Seraphina", f"{SOLO_CHAT_ID}.jsonl"):
            (_START + timedelta(seconds=_SOLO[-1].at)).timestamp(),
        Path("group chats", f"{GROUP_CHAT_ID}.jsonl"):
            (_GROUP_START + timedelta(seconds=_GROUP[-1].at)).timestamp(),
    }  # fmt: skip


def build_sample(user_dir: Path) -> Path:
    """Write the sample user directory at ``user_dir`` (created if needed) and return it.

    The output is deterministic; each chat file's mtime is the time of its last message, so the
    group chat is the active (most recently written) chat.
    """
    for sub in ("characters", "chats/Seraphina", "groups", "group chats"):
        (user_dir / sub).mkdir(parents=True, exist_ok=True)
    for name, fields in _CARDS.items():
        write_card_png(user_dir / "characters" / f"{name}.png", build_card_json(name, **fields))
    solo = [_message(_START, entry, group=False) for entry in _SOLO]
    _write_jsonl(
        user_dir / "chats" / "Seraphina" / f"{SOLO_CHAT_ID}.jsonl",
        [_header("5b0f3c1e-8a5e-4a0e-9f77-2f1d6c0b9a11", len(solo) - 1), *solo],
    )
    group = [_message(_GROUP_START, entry, group=True) for entry in _GROUP]
    _write_jsonl(
        user_dir / "group chats" / f"{GROUP_CHAT_ID}.jsonl",
        [_header("c7d2e9a4-31f6-4b8e-a0d5-6e1f2b7c9d30", len(group) - 1), *group],
    )
    (user_dir / "groups" / f"{GROUP_ID}.json").write_text(
        json.dumps(_group_json(), indent=4), encoding="utf-8"
    )
    (user_dir / "settings.json").write_text(
        json.dumps(_settings_json(), indent=4), encoding="utf-8"
    )
    for relative, when in _chat_times().items():
        os.utime(user_dir / relative, (when, when))
    return user_dir


def copy_sample(dest: Path, *, now: float | None = None) -> Path:
    """Copy the shipped sample into ``dest/default-user`` (``dest`` plays ST's ``data/``).

    Falls back to ``build_sample`` when the package data is missing. Chat file mtimes are reset
    to just before ``now`` (keeping their order and spacing; the group chat is newest, about a
    minute old), since copies and checkouts do not keep them. Returns the user directory.
    """
    target = dest / "default-user"
    if (SAMPLE_DIR / "characters").is_dir():
        shutil.copytree(SAMPLE_DIR, target, dirs_exist_ok=True)
    else:
        build_sample(target)
    times = _chat_times()
    shift = (time.time() if now is None else now) - 60 - max(times.values())
    for relative, when in times.items():
        os.utime(target / relative, (when + shift, when + shift))
    return target
