"""``recall_keep_in_history`` through the real proxy and server: with the reply the model really
wrote sent back (as SillyTavern does), a depth-0 recall no longer costs that reply; without it
(and without the refresh of ``tests/test_recall_refresh.py``) the next turn re-prefills from
where the last recall was, and the ledger books that loss on recall."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kvtui.embedded.server import EmbeddedServer
from tests.st119 import SERA, USER
from tests.test_recall_proxy import SWORD, TEA, Scene, cc_messages, scene, tc_prompt, text_of

pytestmark = pytest.mark.server


async def _two_turns(s: Scene) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Two user turns whose replies are what the model wrote; the server's counts of the
    second turn and the tokens of the first prompt plus its reply."""
    s.messages.append((USER, "Will you lend me your sword for the road?"))
    s.save_chat()
    body = tc_prompt(s.messages)
    first = await s.tc(body)
    assert SWORD in text_of(first)
    turn = s.h.proxy.app.extras.ledger.records()[-1]
    written = s.last_reply
    assert written.strip() and turn.predicted_n
    held = turn.total + turn.predicted_n - 1  # the last token sampled is not in the cache yet
    s.messages.append((SERA, written.strip()))
    s.messages.append((USER, "Could I have a cup of tea before we go?"))
    s.save_chat()
    second = await s.tc(tc_prompt(s.messages))
    assert TEA in text_of(second)
    recall = s.recall()
    assert recall is not None
    return first, recall, held


async def test_kept_recall_keeps_the_reply_cached(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(clean_server, tmp_path, recall_keep_in_history=True) as s:
        first, recall, held = await _two_turns(s)
        turn = s.h.proxy.app.extras.ledger.records()[-1]
        assert text_of(s.sent[-1]).startswith(text_of(first))  # the sword recall stayed
        assert recall["lost_tokens"] == 0 and recall["decision"] == "computed"
        # everything the slot held (prompt and reply) was reused, give or take the boundary
        assert turn.cache_n >= held - 3, (turn.cache_n, held)


async def test_without_it_the_moved_recall_costs_the_reply(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(
        clean_server, tmp_path, recall_keep_in_history=False, recall_refresh=False
    ) as s:
        first, recall, held = await _two_turns(s)
        turn = s.h.proxy.app.extras.ledger.records()[-1]
        assert SWORD not in text_of(s.sent[-1])
        before = len(await s.h.service.tokenize(text_of(first)[: text_of(first).index(SWORD)]))
        assert turn.cache_n <= before + 2 < held  # cached only up to where the recall was
        assert recall["lost_tokens"] > 0 and recall["cost_tokens"] > recall["tokens"]


async def test_chat_completion_keeps_the_note_and_the_reply_cached(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    async with scene(clean_server, tmp_path, recall_keep_in_history=True) as s:
        s.messages.append((USER, "Will you lend me your sword for the road?"))
        s.save_chat()
        first = await s.cc(cc_messages(s.messages))
        assert first["messages"][-1] == {"role": "system", "content": SWORD}
        turn = s.h.proxy.app.extras.ledger.records()[-1]
        assert s.last_reply and turn.predicted_n
        s.messages.append((SERA, s.last_reply))
        s.messages.append((USER, "Could I have a cup of tea before we go?"))
        s.save_chat()
        second = await s.cc(cc_messages(s.messages))
        n = len(first["messages"])
        assert second["messages"][:n] == first["messages"]  # the sword note stayed
        assert second["messages"][-1] == {"role": "system", "content": TEA}
        again = s.h.proxy.app.extras.ledger.records()[-1]
        assert again.cache_n >= turn.total + turn.predicted_n - 1 - 3, (again, turn)
        recall = s.recall()
        assert recall is not None and recall["lost_tokens"] == 0
