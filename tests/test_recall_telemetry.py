"""Recall's telemetry pieces: where an injection landed, its cost from a turn's accounting, the
record round trip, the totals of ``kvtui stats`` and the event-log line."""

from __future__ import annotations

from kvtui.recall import Decision, RecallTelemetry
from kvtui.recall.telemetry import describe, injection_span, turn_entry
from kvtui.warmth.accounting import Split
from kvtui.warmth.model import TurnRecord
from kvtui.warmth.recallcost import recall_cost
from kvtui.warmth.summary import recall_totals


def test_injection_span() -> None:
    written = "story\nAlex: hi\n{{kvtui_memories}}\nSera:"
    sent = "story\nAlex: hi\nThe sword.\nSera:"
    assert injection_span(written, sent) == (15, 25)
    assert sent[15:25] == "The sword."
    assert injection_span(written, written) is None
    removed = "story\nAlex: hi\nSera:"  # an empty recall takes its line: nothing injected
    start, end = injection_span(written, removed)  # type: ignore[misc]
    assert start == end


def split(first_diff: int | None, early: int = 0) -> Split:
    losses = {"prompt_changed_early": early} if early else {}
    return Split(10, early, losses, None, first_diff, None, False)


async def test_recall_cost() -> None:
    t = RecallTelemetry("found", Decision.COMPUTED, "a new user message", ("m#1",), chars=10)
    prompt = "story\nAlex: hi\nThe sword.\nSera:"
    entry = turn_entry(t, (15, 25), (15, 30))

    async def tokenize(text: str, *, add_special: bool = False) -> list[int]:
        assert not add_special
        return list(range(len(text.split())))

    # the first change lies in the previous turn's injection: its early loss is recall's
    cost = await recall_cost(entry, split(17, early=7), prompt, 40, tokenize)
    assert cost is not None and "span" not in cost and "previous_span" not in cost
    assert cost["position"] == 15 and cost["tokens"] == 2  # "The sword."
    assert cost["lost_tokens"] == 7 and cost["cost_tokens"] == 9
    # a change above it (an edit): not recall's loss; recall is prefilled again all the same
    cost = await recall_cost(entry, split(3, early=20), prompt, 40, tokenize)
    assert cost is not None and cost["lost_tokens"] == 0 and cost["cost_tokens"] == 2
    # the same prompt again (a swipe with the recall reused): nothing
    cost = await recall_cost(entry, split(len(prompt)), prompt, 40, None)
    assert cost is not None and cost["cost_tokens"] == 0
    assert await recall_cost(None, split(3), prompt, 40, None) is None


def test_record_round_trip_and_totals() -> None:
    base = {
        "ts": "2026-12-02T00:00:00+00:00", "chat": "c", "chat_title": None, "character": "S",
        "source": "explicit", "gen_type": "normal", "slot": 0, "restored": None,
        "prompt_n": 30, "cache_n": 70, "new_tokens": 30, "lost_tokens": 0, "reason": None,
        "first_diff": None, "disk_read_bytes": 0, "disk_write_bytes": 0,
    }  # fmt: skip
    computed = {"macro": "found", "decision": "computed", "tokens": 12, "lost_tokens": 5,
                "cost_tokens": 17}  # fmt: skip
    reused = {"macro": "found", "decision": "reused", "tokens": 12, "lost_tokens": 0,
              "cost_tokens": 0}  # fmt: skip
    records = [
        TurnRecord.from_json({**base, "recall": computed}),
        TurnRecord.from_json({**base, "recall": reused}),
        TurnRecord.from_json(base),
        TurnRecord.from_json({**base, "recall": {"macro": "malformed"}}),
    ]
    assert all(r is not None for r in records)
    first = records[0]
    assert first is not None and first.recall == computed
    assert TurnRecord.from_json(first.to_json()) == first
    assert records[2] is not None and records[2].recall is None
    totals = recall_totals([r for r in records if r is not None])
    assert totals == {
        "turns": 3,
        "by_decision": {"computed": 1, "malformed": 1, "reused": 1},
        "injected_tokens": 24,
        "lost_tokens": 5,
        "cost_tokens": 17,
    }
    assert recall_totals([r for r in records[2:3] if r is not None]) is None


def test_describe() -> None:
    line = describe(
        "Seraphina",
        {"decision": "computed", "reason": "a new user message", "memories": 3, "chars": 212,
         "tokens": 61, "cost_tokens": 109, "lost_tokens": 48},
    )  # fmt: skip
    assert line == (
        "recall Seraphina: computed (a new user message) · 3 memories, 212 chars (61 tok) · "
        "cost 109 tok (48 cached lost)"
    )
    empty = describe("S", {"decision": "reused", "reason": "continue", "chars": 0})
    assert empty == "recall S: reused (continue) · empty"
    assert describe("S", {"macro": "malformed"}) == "recall S: malformed macro left as written"
