"""Earlier turns' kept recall never pushes a request past the slot's context (real proxy and
server): when the prompt with it and the reply asked for would not fit, the request goes with
this turn's recall only, the event log says why, and the kept recall is forgotten."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.events import Kind
from kvtui.prewarm import plan_prewarm
from kvtui.proxy.recallfit import prompt_fits, reply_tokens
from tests import st119
from tests.st119 import USER
from tests.test_recall_proxy import MACRO, SWORD, TEA, scene, tc_prompt, text_of

pytestmark = pytest.mark.server


@pytest.mark.parametrize("room", [True, False], ids=["fits", "would-overflow"])
async def test_kept_recall_is_left_out_when_it_would_not_fit(
    clean_server: EmbeddedServer, tmp_path: Path, room: bool
) -> None:
    async with scene(clean_server, tmp_path, recall_keep_in_history=True) as s:
        await s.normal("Will you lend me your sword for the road?")
        s.messages.append((USER, "Could I have a cup of tea before we go?"))
        s.save_chat()
        written = tc_prompt(s.messages)
        service = s.h.service
        limit = service.snapshot().n_ctx
        assert limit
        plain = len(await service.tokenize(written.replace(MACRO, TEA), add_special=True))
        reply = limit - plain - 1 if not room else 8  # room for this turn's recall only
        body = st119.tc_body(written, [f"\n{USER}:"])
        body.update(n_predict=reply, max_tokens=reply, max_new_tokens=reply)
        sent = await s._send("/completion", body)
        warnings = [
            e.message
            for e in service.events.recent()
            if e.kind is Kind.ROUTE and "left out of the prompt" in e.message
        ]
        assert TEA in text_of(sent)
        held = s.h.proxy.app.extras.recall
        assert held is not None
        state = held.cached(st119.CHAT_B, st119.SERA)
        assert state is not None
        if room:
            assert SWORD in text_of(sent) and warnings == []  # the sword recall stayed
            assert state.pins
        else:
            assert SWORD not in text_of(sent)
            assert len(warnings) == 1 and f"the slot's {limit:,} tokens" in warnings[0]
            assert state.pins == ()
            fit = await prompt_fits(service, sent)
            assert fit.ok and fit.tokens is not None and fit.tokens + reply <= limit


def test_the_reply_asked_for_is_read_from_any_api_shape() -> None:
    assert reply_tokens({"n_predict": 40, "max_tokens": 9}) == 40
    assert reply_tokens({"n_predict": -1, "max_tokens": 12}) == 12
    assert reply_tokens({"max_completion_tokens": 7}) == 7
    assert reply_tokens({"max_tokens": True}) == 0


async def test_prewarm_replays_the_prompt_the_next_turn_begins_with(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    """The recorded prompt holds the macro; prewarm gets it without the macro's line and with
    the recall kept higher up, so the next turn finds all of it but the last reply cached."""
    async with scene(clean_server, tmp_path, recall_keep_in_history=True) as s:
        await s.normal("Will you lend me your sword for the road?")
        await s.normal("Could I have a cup of tea before we go?")
        service = s.h.service
        await service.recorded_prompt(st119.CHAT_B, st119.SERA)  # its write is flushed
        plan = plan_prewarm(st119.CHAT_B, service.st_data, service.recorder, service.settings)
        warm = plan.choices[st119.SERA].prompt
        assert warm is not None and MACRO not in warm
        assert SWORD in warm and TEA in warm  # both turns' recall, kept where it was
        plain = plan_prewarm(st119.CHAT_B, service.st_data, service.recorder)
        assert plain.choices[st119.SERA].prompt == tc_prompt(s.messages[:-1])  # as written
        slot = service.resident_slot(st119.CHAT_B, st119.SERA)
        assert slot is not None
        await service.client.erase(slot)  # as after a server restart: only prewarm fills it
        await service.complete(warm, slot=slot)
        s.messages.append((USER, "Shall we go, then?"))
        s.save_chat()
        await s.tc(tc_prompt(s.messages))
        turn = s.h.proxy.app.extras.ledger.records()[-1]
        covered = len(await service.tokenize(warm, add_special=True))
        assert turn.cache_n >= covered - 3, (turn.cache_n, covered)


async def test_the_last_turns_characters_per_token_settle_most_requests_unasked(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(clean_server, tmp_path) as s:
        service = s.h.service
        await s.normal("Will you lend me your sword for the road?")  # the server is polled
        limit = service.snapshot().n_ctx
        assert limit
        body = {"prompt": "a b " * (limit // 2), "n_predict": 8}  # more bytes than the limit
        estimated = await prompt_fits(service, body, chars_per_token=4.0)
        assert estimated.ok and estimated.tokens is None  # settled without the tokenizer
        counted = await prompt_fits(service, body)
        assert counted.tokens is not None and counted.ok == (counted.tokens + 8 <= limit)
        tight = await prompt_fits(service, body, chars_per_token=2.0)  # the estimate is near
        assert tight.tokens is not None  # the limit: the tokenizer decides


async def test_after_a_fallback_nothing_is_kept_until_there_is_room(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    """No warning every other turn on a full context: after one fallback the character's turns
    keep no recall (each is refreshed instead) until a prompt has room for the keep budget."""
    async with scene(
        clean_server, tmp_path, recall_keep_in_history=True, recall_keep_budget=40
    ) as s:
        service = s.h.service

        async def turn(text: str, tight: bool) -> str:
            s.messages.append((USER, text))
            s.save_chat()
            written = tc_prompt(s.messages)
            body = st119.tc_body(written, [f"\n{USER}:"])
            n = len(await service.tokenize(written, add_special=True))
            limit = service.snapshot().n_ctx or 0
            reply = limit - n - 25 if tight else 8  # 25: room for this turn's recall alone
            body.update(n_predict=reply, max_tokens=reply, max_new_tokens=reply)
            sent = text_of(await s._send("/completion", body))
            s.reply()
            return sent

        def said(what: str) -> int:
            return sum(what in e.message for e in service.events.recent() if e.kind is Kind.ROUTE)

        await turn("Will you lend me your sword for the road?", tight=False)
        sent = await turn("Could I have a cup of tea before we go?", tight=True)
        assert SWORD not in sent and said("left out of the prompt") == 1
        sent = await turn("And the sword again?", tight=True)
        assert sent.count(SWORD) == 1 and said("left out of the prompt") == 1  # kept nothing
        assert said("refreshed in the background") >= 1  # the reply is refreshed instead
        await turn("Tea once more?", tight=False)
        assert said("room again to keep recall") == 1
        sent = await turn("And the sword?", tight=False)
        assert TEA in sent  # the last turn's recall was kept again
