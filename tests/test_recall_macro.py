"""The recall macros: where they are found, how they are replaced, and the long-term block."""

from __future__ import annotations

import json
from typing import Any

from kvtui.recall import Decision, RecallEngine, RecallSettings, StaticSource
from kvtui.recall.macro import replace_macros, request_texts, scan, strip_macros
from kvtui.recall.memories import Memory
from kvtui.slots import GenType

M, L = "kvtui_memories", "kvtui_longterm"


def test_scan_finds_well_formed_and_reports_malformed() -> None:
    body = {"prompt": "a {{kvtui_memories}} b {{kvtui_longterm} c {{KVTUI_MEMORIES}}"}
    found = scan(body, (M, L))
    assert found.found == {M} and found.malformed == ("{{kvtui_longterm}",)
    assert scan({"prompt": "the word kvtui_memories alone"}, (M,)).malformed == ()
    assert scan({"prompt": [1, 2, 3]}, (M,)).found == frozenset()


def test_empty_replacement_removes_the_line_cleanly() -> None:
    cases = {
        "a\n{{kvtui_memories}}\nb": "a\nb",
        "a\n  {{kvtui_memories}} \nb": "a\nb",
        "a\n{{kvtui_memories}}": "a",
        "{{kvtui_memories}}\nb": "b",
        "{{kvtui_memories}}": "",
        "a {{kvtui_memories}} b": "a  b",  # inline: only the macro goes
    }
    for before, after in cases.items():
        assert replace_macros({"prompt": before}, {M: ""}).body["prompt"] == after, before
        assert strip_macros(before, (M,)) == after


def test_two_macros_positions_are_in_the_final_text() -> None:
    body = {"prompt": "head {{kvtui_longterm}} mid {{kvtui_memories}} tail"}
    out = replace_macros(body, {M: "RECALL", L: "LONG-TERM"})
    text = out.body["prompt"]
    assert text == "head LONG-TERM mid RECALL tail"
    assert text[out.placements[L].position :].startswith("LONG-TERM")
    assert text[out.placements[M].position :].startswith("RECALL")
    assert out.placements[M].chars_after == len(" tail")
    assert body["prompt"].startswith("head {{")  # the input is not modified


def test_chat_messages_positions_and_dropped_messages() -> None:
    body: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "{{kvtui_longterm}}"},
            {"role": "user", "content": [{"type": "image_url"}, {"type": "text", "text": "hi"}]},
            {"role": "system", "content": "{{kvtui_memories}}"},
            {"role": "user", "content": "end"},
        ]
    }
    out = replace_macros(body, {M: "R", L: ""})
    assert [m["content"] for m in out.body["messages"]][1:] == ["R", "end"]
    assert out.body["messages"][0]["content"][1] == {"type": "text", "text": "hi"}
    flat = request_texts(out.body)
    assert flat == "hi\nR\nend"
    assert flat[out.placements[M].position] == "R" and L not in out.placements
    # the shared parts are the caller's own objects, not copies
    assert out.body["messages"][0] is body["messages"][1]


def test_batch_prompt_list() -> None:
    out = replace_macros({"prompt": ["x {{kvtui_memories}}", 7, "y"]}, {M: "R"})
    assert out.body["prompt"] == ["x R", 7, "y"]


def test_a_replacement_with_backslashes_is_literal() -> None:
    out = replace_macros({"prompt": "{{kvtui_memories}}"}, {M: r"a\1 \g<0> \n"})
    assert out.body["prompt"] == r"a\1 \g<0> \n"


def test_disabled_recall_leaves_the_macro() -> None:
    eng = RecallEngine(RecallSettings(enabled=False), StaticSource({}))
    body = {"prompt": "x {{kvtui_memories}}\nAlex: hi\nSeraphina:"}
    out = eng.apply(body, chat="c", character="Seraphina", gen_type=GenType.NORMAL)
    assert out.body is body and out.telemetry.macro == "disabled"


def test_custom_macro_name() -> None:
    eng = RecallEngine(
        RecallSettings(macro="mem"), StaticSource({"c": [Memory("b#0", 0, "", "Tea.", ("tea",))]})
    )
    body = {"prompt": "{{mem}}\n{{kvtui_memories}}\nAlex: tea?\nSeraphina:", "stop": ["\nAlex:"]}
    out = eng.apply(body, chat="c", character="Seraphina", gen_type=GenType.NORMAL)
    assert out.body["prompt"] == "Tea.\n{{kvtui_memories}}\nAlex: tea?\nSeraphina:"


# -- the stable long-term block ------------------------------------------------------------


def lt_memories(n: int) -> list[Memory]:
    return [Memory(f"b#{i}", i, f"[{i:03}]", f"Memory {i}.", (f"k{i}",), order=i) for i in range(n)]


def lt_body(user: str) -> dict[str, Any]:
    prompt = (
        "System.\n{{kvtui_longterm}}\nCard.\n***\nSeraphina: Hello.\n{{kvtui_memories}}\n"
        f"Alex: {user}\nSeraphina:"
    )
    return {"prompt": prompt, "stop": ["\nAlex:"], "cache_prompt": True}


def test_longterm_changes_only_in_batches() -> None:
    source = StaticSource({"c": lt_memories(3)})
    eng = RecallEngine(RecallSettings(longterm_batch=2), source)

    def turn(user: str) -> Any:
        return eng.apply(lt_body(user), chat="c", character="S", gen_type=GenType.NORMAL)

    first = turn("k0 k1?")
    assert first.telemetry.longterm_batch == 1
    assert first.body["prompt"].startswith("System.\nMemory 0.\nMemory 1.\nMemory 2.\nCard.")
    # memories already in the long-term block are not recalled again per turn
    assert first.telemetry.memory_ids == () and first.telemetry.decision is Decision.COMPUTED
    source.by_chat["c"] = lt_memories(4)  # one new memory: below the batch size
    second = turn("k3?")
    assert second.telemetry.longterm_batch == 1 and second.telemetry.longterm_changed is False
    assert second.body["prompt"].split("Card.")[0] == first.body["prompt"].split("Card.")[0]
    assert second.telemetry.memory_ids == ("b#3",)  # recalled per turn until the next batch
    source.by_chat["c"] = lt_memories(5)  # two new: the block is rebuilt, appended at its end
    third = turn("k4?")
    assert third.telemetry.longterm_batch == 2 and third.telemetry.longterm_changed is True
    head = third.body["prompt"].split("Card.")[0]
    assert head == "System.\n" + "\n".join(f"Memory {i}." for i in range(5)) + "\n"
    assert third.telemetry.memory_ids == ()


def test_longterm_on_request_and_budget_keeps_the_newest() -> None:
    source = StaticSource({"c": lt_memories(2)})
    eng = RecallEngine(RecallSettings(longterm_batch=50, longterm_budget=8), source)
    eng.apply(lt_body("x"), chat="c", character="S", gen_type=GenType.NORMAL)
    source.by_chat["c"] = lt_memories(4)
    assert eng.refresh_longterm("c") == 2
    out = eng.apply(lt_body("y"), chat="c", character="S", gen_type=GenType.NORMAL)
    # "Memory N." is 3 tokens (+1 joiner): two fit in 8
    assert out.body["prompt"].startswith("System.\nMemory 2.\nMemory 3.\nCard.")
    assert json.dumps(out.telemetry.to_json())  # JSON-ready


def test_recall_is_service_layer_without_textual() -> None:
    import subprocess
    import sys

    code = (
        "import sys, kvtui.recall, kvtui.recall.engine\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'textual')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
