"""``recall_refresh`` through the real proxy and server: after a reply with a depth-0 recall, the
slot is given the prompt without that recall plus the reply, so the next turn (the reply the
model really wrote sent back, as SillyTavern does) finds it all cached and prefills only the
user's new message and the new recall. What llama-server is sent for the turns themselves is
exactly what it is sent without the refresh; a swipe pays this turn's recall again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.events import Kind
from kvtui.recall import RecallOutcome, RecallTelemetry
from kvtui.recall.refresh import plan_refresh
from tests import st119
from tests.st119 import SERA, USER
from tests.test_recall_proxy import SWORD, TEA, Scene, cc_messages, scene, tc_prompt, text_of

pytestmark = pytest.mark.server


def refreshed(s: Scene) -> list[str]:
    return [
        e.message
        for e in s.h.service.events.recent()
        if e.kind is Kind.ROUTE and "refreshed in the background" in e.message
    ]


async def _turn_then_reply(s: Scene, text: str) -> tuple[dict[str, Any], str]:
    s.messages.append((USER, text))
    s.save_chat()
    sent = await s.tc(tc_prompt(s.messages))
    written = s.last_reply.strip()
    assert written
    return sent, written


@pytest.mark.parametrize("refresh", [True, False], ids=["refresh", "control"])
async def test_the_next_turn_finds_the_reply_cached(
    clean_server: EmbeddedServer, tmp_path: Path, refresh: bool
) -> None:
    async with scene(
        clean_server, tmp_path, recall_keep_in_history=False, recall_refresh=refresh
    ) as s:
        first, written = await _turn_then_reply(s, "Will you lend me your sword for the road?")
        assert SWORD in text_of(first)
        without = tc_prompt(s.messages, note=None)  # the prompt as if the recall were empty
        s.messages.append((SERA, written))
        s.messages.append((USER, "Could I have a cup of tea before we go?"))
        s.save_chat()
        second = await s.tc(tc_prompt(s.messages))
        assert TEA in text_of(second) and SWORD not in text_of(second)
        turn = s.h.proxy.app.extras.ledger.records()[-1]
        held = len(await s.h.service.tokenize(f"{without} {written}", add_special=True))
        before = len(await s.h.service.tokenize(text_of(first)[: text_of(first).index(SWORD)]))
        if refresh:
            assert len(refreshed(s)) == 2  # after each turn
            assert turn.cache_n >= held - 3, (turn.cache_n, held)
            recall = s.recall()
            assert recall is not None and recall["lost_tokens"] == 0
        else:
            assert refreshed(s) == []
            assert turn.cache_n <= before + 2 < held - 3


async def test_a_swipe_is_sent_the_same_and_prefills_only_the_recall(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(clean_server, tmp_path, recall_keep_in_history=False) as s:
        first, _written = await _turn_then_reply(s, "Will you lend me your sword for the road?")
        sent = await s.tc(tc_prompt(s.messages))  # a swipe: the same prompt again
        assert text_of(sent) == text_of(first)  # what the model reads is unchanged
        turn = s.h.proxy.app.extras.ledger.records()[-1]
        at = text_of(first).index(SWORD)
        before = len(await s.h.service.tokenize(text_of(first)[:at], add_special=True))
        assert before - 3 <= turn.cache_n <= before + 2  # the recall and the tail again
        assert turn.prompt_n <= turn.total - before + 3


async def test_chat_completion_is_refreshed_through_the_servers_template(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(clean_server, tmp_path, recall_keep_in_history=False) as s:
        s.messages.append((USER, "Will you lend me your sword for the road?"))
        s.save_chat()
        first = await s.cc(cc_messages(s.messages))
        assert first["messages"][-1] == {"role": "system", "content": SWORD}
        written = s.last_reply.strip()
        assert written and len(refreshed(s)) == 1
        rendered = await s.h.service.client.apply_template(
            [*cc_messages(s.messages, note=False), {"role": "assistant", "content": written}]
        )
        held = len(await s.h.service.tokenize(rendered, add_special=True))
        s.messages.append((SERA, written))
        s.messages.append((USER, "Could I have a cup of tea before we go?"))
        s.save_chat()
        second = await s.cc(cc_messages(s.messages))
        assert second["messages"][-1] == {"role": "system", "content": TEA}
        turn = s.h.proxy.app.extras.ledger.records()[-1]
        assert turn.cache_n >= held - 3, (turn.cache_n, held)


async def test_nothing_is_refreshed_without_a_macro_or_with_the_recall_at_the_top(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(clean_server, tmp_path, recall_keep_in_history=False) as s:
        s.messages.append((USER, "Will you lend me your sword for the road?"))
        s.save_chat()
        await s.tc(tc_prompt(s.messages, note=None))
        top = tc_prompt(s.messages, note=None).replace("***\n", "{{kvtui_memories}}\n***\n", 1)
        sent = await s.tc(top)
        assert SWORD in text_of(sent)  # injected at the top of the chat: nothing to refresh
        assert refreshed(s) == []


def test_the_reply_is_written_back_as_sillytavern_writes_it() -> None:
    sent = "story\nAlex: hi\n[memory]\nSeraphina:"
    t = RecallTelemetry("found", chars=8, position=sent.index("[memory]"), chars_after=12)
    outcome = RecallOutcome({"prompt": sent}, t, text="[memory]", settled={"prompt": "s\nS:"})
    plan = plan_refresh(outcome, "  Hello there.\n")
    assert plan is not None and plan.prompt == "s\nS: Hello there."
    instruct = RecallOutcome(
        {"prompt": sent}, t, text="[memory]", settled={"prompt": "<|im_start|>assistant\n"}
    )
    plan = plan_refresh(instruct, " Hello there.")
    assert plan is not None and plan.prompt == "<|im_start|>assistant\nHello there."
    continued = RecallOutcome(
        {"prompt": sent}, t, text="[memory]", settled={"prompt": "S: She turned"}
    )
    plan = plan_refresh(continued, " and smiled.\n")
    assert plan is not None and plan.prompt == "S: She turned and smiled."
    assert plan_refresh(outcome, "  \n") is None  # an empty reply: nothing to write back
    nothing = RecallOutcome({"prompt": sent}, t, text="", settled=None)
    assert plan_refresh(nothing, "Hello") is None


def test_st119_renders_the_note_at_depth_0() -> None:
    """The helper the scene uses: the Author's Note is the prompt's last line before the tail."""
    assert tc_prompt([(USER, "hi")]).endswith(f"{USER}: hi\n{{{{kvtui_memories}}}}\n{SERA}:")
    assert st119.story(SERA) in tc_prompt([(USER, "hi")], note=None)
