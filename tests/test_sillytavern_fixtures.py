"""Identity and generation type over request bodies captured from a real SillyTavern 1.19.0.

The captures (``tests/fixtures/sillytavern-1.19/plain``, or ``$KVTUI_ST119_FIXTURES``) hold each
generation's verbatim body and what it really was (chat, character, type), but not the data
directory. The test replays the session against the sample data directory (the one the capture
started from) plus the older Seraphina chat, writing each chat file the way SillyTavern does
before the request (the user's message is saved first; a swipe leaves the swiped reply in the
file; an open writes nothing) and moving the card's ``chat`` and ``settings.json`` the way the
capture's ``opens.json`` shows. It is skipped when the captures are absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from kvtui.proxy.chatidentity import identify
from kvtui.proxy.gentype import TurnMemory, classify_request, remember, request_prompt
from kvtui.proxy.identity import IdentitySource
from kvtui.sillytavern import build_card_json, build_sample, write_card_png
from kvtui.sillytavern import sample as sample_mod
from kvtui.sillytavern.chatindex import ChatIndex
from kvtui.slots import GenType
from tests import st119

FIXTURES = Path(
    os.environ.get(
        "KVTUI_ST119_FIXTURES",
        str(Path(__file__).parent / "fixtures" / "sillytavern-1.19" / "plain"),
    )
)
OLD_CHAT = "Seraphina - 2026-05-01@09h12m00s000ms"
NAMES = ("Seraphina", "Kael", "Mira", "Brann", "Alex")
SWIPED = "(the reply being swiped, still in the file)"

pytestmark = pytest.mark.skipif(
    not (FIXTURES / "manifest.json").is_file(), reason="no SillyTavern 1.19 captures"
)


def _tc_messages(prompt: str) -> list[st119.Msg]:
    chat = prompt[prompt.rfind("***\n") + 4 :]
    messages: list[st119.Msg] = []
    for line in chat.split("\n"):
        name, sep, text = line.partition(":")
        if sep and name in NAMES:
            text = text.removeprefix(f"{name}:")  # a 1.19 continue: Name:Name: text
            messages.append((name, text.strip()))
        elif messages:
            messages[-1] = (messages[-1][0], messages[-1][1] + "\n" + line)
    if messages and not messages[-1][1]:
        messages.pop()  # the reply-request tail
    return messages


def _cc_messages(body: dict[str, Any]) -> list[st119.Msg]:
    messages = body["messages"]
    start = max(i for i, m in enumerate(messages) if str(m["content"]).startswith("[Start a new"))
    out: list[st119.Msg] = []
    for m in messages[start + 1 :]:
        content = str(m["content"])
        if m["role"] == "system":
            continue
        if m["role"] == "user":
            out.append(("Alex", content))
            continue
        name, sep, text = content.partition(": ")
        out.append((name, text) if sep and name in NAMES else ("Seraphina", content))
    return out


def _generations() -> list[dict[str, Any]]:
    manifest = json.loads((FIXTURES / "manifest.json").read_text("utf-8"))
    return [json.loads((FIXTURES / g["file"]).read_text("utf-8")) for g in manifest["generations"]]


def _chat_path(user_dir: Path, expected: dict[str, Any]) -> Path:
    if expected["group"]:
        return user_dir / "group chats" / f"{expected['chat']}.jsonl"
    return user_dir / "chats" / "Seraphina" / f"{expected['chat']}.jsonl"


def _settings(user_dir: Path, character: str | None, group: str | None) -> None:
    path = user_dir / "settings.json"
    settings = json.loads(path.read_text("utf-8"))
    settings.update(active_character=character, active_group=group)
    path.write_text(json.dumps(settings), "utf-8")


def _card_chat(user_dir: Path, chat: str) -> None:
    fields = dict(sample_mod._CARDS["Seraphina"], chat=chat)
    write_card_png(
        user_dir / "characters" / "Seraphina.png", build_card_json("Seraphina", **fields)
    )


@pytest.mark.parametrize("remembers", [True, False], ids=["turns-seen", "fresh-kvtui"])
def test_the_captured_session_replays_with_the_right_chat_character_and_type(
    tmp_path: Path, remembers: bool
) -> None:
    """Every generation: the right chat, character and type, from a sure identity. Without
    ``remembers`` kvtui has seen no earlier turn of any chat (as after a restart before every
    request), so the type rests on the chat file alone."""
    generations = _generations()
    user_dir = build_sample(tmp_path / "default-user")
    clock = 1_800_000_000.0
    by_file = {Path(g["expected"]["scenario"]).name: g for g in generations}
    old = by_file["tc_open_old_swipe_first"]
    st119.write_chat(
        user_dir / "chats" / "Seraphina" / f"{OLD_CHAT}.jsonl",
        [*_tc_messages(old["body"]["prompt"]), ("Seraphina", SWIPED)],
        mtime=clock - 86_400,
    )
    _settings(user_dir, "Seraphina.png", None)
    index = ChatIndex(user_dir)
    memory: dict[tuple[str, str], TurnMemory | None] = {}
    wrong: list[str] = []
    for generation in generations:
        clock += 60
        expected = generation["expected"]
        scenario = expected["scenario"]
        body = generation["body"]
        # What SillyTavern's state files say at this point (opens.json of the capture).
        if scenario == "tc_open_old_swipe_first":
            _card_chat(user_dir, OLD_CHAT)
        if scenario == "tc_reopen_solo_swipe_first":
            _card_chat(user_dir, sample_mod.SOLO_CHAT_ID)
            _settings(user_dir, "Seraphina.png", None)
        if expected["group"] and not scenario.endswith("seraphina"):
            _settings(user_dir, None, expected["group"])  # about a second late: not for the 1st
        if not expected["group"] and scenario.startswith("cc_solo_send"):
            _settings(user_dir, "Seraphina.png", None)
        # The chat file as it is when the request is sent.
        messages = _tc_messages(body["prompt"]) if "prompt" in body else _cc_messages(body)
        kind = expected["type"]
        if kind == "impersonate":
            pass  # the history as it stands; the tail asks the user
        elif kind in ("swipe", "regenerate"):
            messages = [*messages, (expected["character"], SWIPED)]
        path = _chat_path(user_dir, expected)
        if kind == "swipe":
            # The reply being swiped was saved when it finished (an open writes nothing).
            finished = path.stat().st_mtime + 5 if path.exists() else clock - 30
            st119.write_chat(path, messages, group=bool(expected["group"]), mtime=finished)
        elif kind != "impersonate" or not path.exists():
            st119.write_chat(path, messages, group=bool(expected["group"]), mtime=clock - 1)
        index.refresh()
        identity, forwarded = identify(body, generation["headers"], index, now=clock)
        key = (identity.chat, identity.character)
        result = classify_request(
            forwarded,
            memory.get(key),
            character=identity.character,
            user_name="Alex",
            chat=identity.evidence,
            prompts=index.state.prompts,
        )
        assert result is not None
        want = {"regenerate": GenType.NORMAL}.get(kind, GenType(kind))  # edited, then regenerated
        got = (identity.chat, identity.character, result.gen_type)
        if got != (expected["chat"], expected["character"], want) or not identity.sure:
            wrong.append(f"{generation['seq']} {scenario}: {got} {identity.source} {result.reason}")
        prompt = request_prompt(forwarded, index.state.prompts)
        assert prompt is not None
        if remembers:
            memory[key] = remember(memory.get(key), result, prompt, "")
    assert wrong == []


EXTENSION = FIXTURES.parent / "with-extension"


@pytest.mark.skipif(
    not (EXTENSION / "manifest.json").is_file(), reason="no captures with the extension"
)
def test_with_the_companion_extension_every_identity_is_stated(tmp_path: Path) -> None:
    manifest = json.loads((EXTENSION / "manifest.json").read_text("utf-8"))
    index = ChatIndex(build_sample(tmp_path / "default-user"))
    index.refresh()
    seen = 0
    for entry in manifest["generations"]:
        generation = json.loads((EXTENSION / entry["file"]).read_text("utf-8"))
        expected = generation["expected"]
        identity, forwarded = identify(generation["body"], generation["headers"], index)
        assert "kvtui" not in forwarded
        assert (identity.chat, identity.character, identity.group) == (
            expected["chat"],
            expected["character"],
            expected["group"],
        ), entry["file"]
        assert identity.source is IdentitySource.EXTENSION and identity.sure
        assert identity.declared_type is GenType(expected["type"]), entry["file"]
        seen += 1
    assert seen == len(manifest["generations"]) > 0
