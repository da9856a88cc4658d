"""``keep_in_history``: each turn's recall stays where the model read it, so the prompt the slot
holds (with the reply written after it) stays a prefix of the next turn's prompt."""

from __future__ import annotations

from pathlib import Path

from kvtui.recall import Decision, RecallEngine, RecallSettings, StaticSource
from kvtui.recall.memories import Memory
from kvtui.recall.pins import Pin, build, digest, insertion, kept, within_budget
from kvtui.slots import GenType

CHAT, CHAR = "c", "Seraphina"
STORY = "Seraphina guards the forest.\n***\nSeraphina: Welcome, traveller.\n"
MEMORIES = [
    Memory("m#0", 0, "", "Alex's sword lies by the river.", ("sword",)),
    Memory("m#1", 1, "", "Seraphina brews mint tea at dusk.", ("tea",)),
    Memory("m#2", 2, "", "Shadow wolves hunt at night.", ("wolves",)),
]


def prompt(lines: list[str], depth: int = 0) -> str:
    shown = list(lines)
    shown.insert(len(shown) - depth, "{{kvtui_memories}}")
    return STORY + "\n".join(shown) + "\nSeraphina:"


def engine(tmp_path: Path | None = None, **kw: object) -> RecallEngine:
    settings = RecallSettings(keep_in_history=True, **kw)
    return RecallEngine(
        settings,
        StaticSource({CHAT: MEMORIES}),
        state_path=tmp_path / "recall.json" if tmp_path else None,
    )


def send(eng: RecallEngine, text: str, gen: GenType = GenType.NORMAL) -> tuple[str, object]:
    out = eng.apply({"prompt": text, "stop": ["\nAlex:"]}, chat=CHAT, character=CHAR, gen_type=gen)
    return str(out.body["prompt"]), out.telemetry


def test_helpers() -> None:
    assert insertion("A\nB", "A\nX\nB", 2) == "X\n"
    assert insertion("A\nB", "A\nX\nC", 2) is None
    base = "one two three"
    pins = [Pin(4, digest(base[:4]), "[a] "), Pin(8, digest(base[:8]), "[b] ")]
    assert build(base, pins) == "one [a] two [b] three"
    assert kept(pins, base, 13) == pins
    assert kept(pins, base, 8) == pins[:1]  # the macro is where the second one was: replaced
    assert kept(pins, "one TWO three", 13) == pins[:1]  # an edit drops it and every later one
    assert kept(pins, "ONE two three", 13) == []
    assert within_budget(pins, 4, len) == pins[1:]  # the oldest go first
    assert Pin.from_json(pins[0].to_json()) == pins[0] and Pin.from_json({"x": 1}) is None


def test_depth0_recall_stays_so_prompt_and_reply_stay_a_prefix(tmp_path: Path) -> None:
    eng = engine(tmp_path)
    chat = ["Alex: Where is my sword?"]
    first, t1 = send(eng, prompt(chat))
    assert "Where is my sword?\nAlex's sword lies by the river.\nSeraphina:" in first
    held = first + " By the river."  # the slot: the prompt and the reply the model wrote
    chat += ["Seraphina: By the river.", "Alex: And some tea?"]
    second, t2 = send(eng, prompt(chat))
    assert second.startswith(held)
    assert second.endswith("Alex: And some tea?\nSeraphina brews mint tea at dusk.\nSeraphina:")
    assert t2.position == second.index("Seraphina brews")  # type: ignore[attr-defined]
    # a swipe and a regenerate send it again exactly
    assert send(eng, prompt(chat), GenType.SWIPE)[0] == second
    assert send(eng, prompt(chat), GenType.REGENERATE)[0] == second
    # a memory already shown in the prompt is not repeated
    chat += ["Seraphina: Here.", "Alex: Tea, my sword and the wolves?"]
    third, t3 = send(eng, prompt(chat))
    assert third.startswith(second + " Here.")
    assert third.count("Alex's sword lies") == 1 and third.count("mint tea") == 1
    assert third.endswith("wolves?\nShadow wolves hunt at night.\nSeraphina:")
    # the pins survive a restart
    again = engine(tmp_path)
    assert send(again, prompt(chat), GenType.SWIPE)[0] == third


def test_an_edit_drops_the_pins_after_it() -> None:
    eng = engine()
    chat = ["Alex: Where is my sword?"]
    send(eng, prompt(chat))
    chat += ["Seraphina: By the river.", "Alex: And some tea?"]
    send(eng, prompt(chat))
    chat[0] = "Alex: Where is my bow?"  # the first message edited: no pin survives it
    chat[2] = "Alex: And some tea, please?"
    text, t = send(eng, prompt(chat), GenType.REGENERATE)
    assert "sword lies" not in text
    assert t.decision is Decision.RECOMPUTED  # type: ignore[attr-defined]
    assert text == prompt(chat).replace("{{kvtui_memories}}", "Seraphina brews mint tea at dusk.")


def test_impersonate_uses_the_pins_and_changes_nothing() -> None:
    eng = engine()
    chat = ["Alex: Where is my sword?"]
    first, _ = send(eng, prompt(chat))
    chat += ["Seraphina: By the river."]
    side = STORY + "\n".join(chat) + "\n{{kvtui_memories}}\nAlex:"
    out = eng.apply({"prompt": side, "stop": ["\nSeraphina:"]}, chat=CHAT, character=CHAR,
                    gen_type=GenType.IMPERSONATE)  # fmt: skip
    sent = str(out.body["prompt"])
    assert sent.startswith(first + " By the river.") and sent.count("sword lies") == 1
    state = eng.cached(CHAT, CHAR)
    assert state is not None and len(state.pins) == 1


def test_on_by_default_and_empty_recall_is_the_prompt_without_the_macro() -> None:
    assert RecallSettings().keep_in_history
    plain = RecallEngine(RecallSettings(keep_in_history=False), StaticSource({CHAT: MEMORIES}))
    chat = ["Alex: Where is my sword?"]
    send(plain, prompt(chat))
    chat += ["Seraphina: By the river.", "Alex: And some tea?"]
    text, _ = send(plain, prompt(chat))
    assert text.count("sword lies") == 0  # not kept: depth 0 moved on
    eng = engine()
    nothing = ["Alex: Hello there."]
    text, _ = send(eng, prompt(nothing))
    assert text == STORY + "Alex: Hello there.\nSeraphina:"


def test_kept_recall_is_bounded_by_its_budget() -> None:
    """Once the kept recall fills the budget, a new one is injected but not kept: the old ones
    stay (dropping them would re-prefill the chat from the first)."""
    eng = engine(keep_budget=12)  # estimated tokens (characters / 4): one memory fits
    chat = ["Alex: Where is my sword?"]
    first, _ = send(eng, prompt(chat))
    chat += ["Seraphina: Yes.", "Alex: And some tea?"]
    second, _ = send(eng, prompt(chat))
    assert second.startswith(first + " Yes.") and "mint tea at dusk.\nSeraphina:" in second
    chat += ["Seraphina: Yes.", "Alex: Wolves?"]
    text, _ = send(eng, prompt(chat))
    assert text.startswith(first + " Yes.")  # the sword recall is still kept ...
    assert "mint tea" not in text  # ... the tea one was not (it did not fit)
    assert text.endswith("Wolves?\nShadow wolves hunt at night.\nSeraphina:")


def cc(chat: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Chat Completion messages with the Author's Note as a system message at depth 0."""
    out = [{"role": "system", "content": "Seraphina guards the forest."}]
    out += [{"role": role, "content": text} for role, text in chat]
    return [*out, {"role": "system", "content": "{{kvtui_memories}}"}]


def test_chat_completion_keeps_the_recall_message_where_it_was() -> None:
    eng = engine()

    def send_cc(chat: list[tuple[str, str]], gen: GenType = GenType.NORMAL) -> list[object]:
        body = {"messages": cc(chat)}
        out = eng.apply(body, chat=CHAT, character=CHAR, gen_type=gen)
        return list(out.body["messages"])

    chat = [("user", "Where is my sword?")]
    first = send_cc(chat)
    assert first[-1] == {"role": "system", "content": "Alex's sword lies by the river."}
    chat += [("assistant", "By the river."), ("user", "And some tea?")]
    second = send_cc(chat)
    assert second[: len(first)] == first  # the sword note stays after the message it followed
    assert second[len(first)] == {"role": "assistant", "content": "By the river."}
    assert second[-1] == {"role": "system", "content": "Seraphina brews mint tea at dusk."}
    assert send_cc(chat, GenType.REGENERATE) == second
    chat[2] = ("user", "And some wine?")  # edited: nothing matches, the note goes
    third = send_cc(chat, GenType.REGENERATE)
    assert third == [*first, {"role": "assistant", "content": "By the river."},
                     {"role": "user", "content": "And some wine?"}]  # fmt: skip


def test_the_fallback_without_kept_recall_shows_every_memory_this_turn_chose() -> None:
    """Sent without the kept recall (it would not fit the slot), the turn's recall is chosen as
    if nothing were shown, and it becomes the turn's cached recall once the proxy uses it."""
    eng = engine(scan_depth=1)
    chat = ["Alex: Where is my sword?"]
    send(eng, prompt(chat))
    chat += ["Seraphina: Yes.", "Alex: And some tea?"]
    send(eng, prompt(chat))
    chat += ["Seraphina: Yes.", "Alex: Tea, my sword and the wolves?"]
    body = {"prompt": prompt(chat), "stop": ["\nAlex:"]}
    out = eng.apply(body, chat=CHAT, character=CHAR, gen_type=GenType.NORMAL)
    assert out.text == "Shadow wolves hunt at night."  # the others are kept higher up
    assert out.fallback is not None
    alone = str(out.fallback.body["prompt"])
    for memory in MEMORIES:
        assert alone.count(memory.content) == 1, memory  # each once, at the macro
    assert alone.endswith("Shadow wolves hunt at night.\nSeraphina:")
    assert out.fallback.settled == {
        **body,
        "prompt": prompt(chat).replace("{{kvtui_memories}}\n", ""),
    }
    eng.drop_pins(CHAT, CHAR, out.fallback)
    swipe = eng.apply(body, chat=CHAT, character=CHAR, gen_type=GenType.SWIPE)
    assert swipe.body == out.fallback.body  # the swipe reuses what was sent, with no pins
