"""What a recall change costs the cached prompt, measured on the real llama-server.

The same SillyTavern-shaped chat is sent twice to one slot (``id_slot``, ``cache_prompt: true``):
a turn, then the next turn, whose recall differs. With the macro near the end (an Author's Note
at depth 1) only the last messages re-prefill; with the macro in the story string (the top) the
whole chat re-prefills. A regenerate (the recall reused) re-prefills nothing. The figures come
from the server's own ``timings.cache_n`` / ``prompt_n``.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.recall import RecallEngine, RecallSettings, StaticSource
from kvtui.recall.memories import Memory
from kvtui.slots import GenType

pytestmark = pytest.mark.server

CHAR, USER, CHAT = "Seraphina", "Alex", "bench chat"
SYSTEM = "Write Seraphina's next reply in a fictional chat between Seraphina and Alex.\n"
CARD = (
    "Seraphina is a guardian spirit of the Eldoria forest. She heals travellers and speaks "
    "softly. Alex is a traveller who woke up in her glade after an attack by shadow beasts.\n"
)
MEMORIES = [
    Memory("b#0", 0, "", "Alex's sword lies by the river.", ("sword",)),
    Memory("b#1", 1, "", "Seraphina brews mint tea at dusk.", ("tea",)),
]
FILLER = "The wind moved through the old trees while the two of them talked about the road."


def history(turn: int) -> list[tuple[str, str]]:
    """A chat of ten filler exchanges, then ``turn`` user messages asking about sword, tea."""
    chat = [(CHAR if i % 2 else USER, f"{FILLER} ({i})") for i in range(1, 11)]
    asks = ["Where is my sword?", "Could I have some tea?"]
    for i in range(turn):
        chat.append((USER, asks[i]))
        if i + 1 < turn:
            chat.append((CHAR, f"Of course. {FILLER}"))
    return chat


def prompt(turn: int, placement: str) -> str:
    lines = [f"{name}: {text}" for name, text in history(turn)]
    head = SYSTEM + ("{{kvtui_memories}}\n" if placement == "top" else "") + CARD
    if placement == "end":
        lines.insert(len(lines) - 1, "{{kvtui_memories}}")  # Author's Note at depth 1
    return head + "***\n" + "\n".join(lines) + f"\n{CHAR}:"


def post(server: EmbeddedServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        server.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        result: dict[str, Any] = json.loads(resp.read())
        return result


def send(server: EmbeddedServer, body: dict[str, Any], slot: int) -> dict[str, int]:
    sent = {**body, "id_slot": slot, "cache_prompt": True, "n_predict": 1, "temperature": 0}
    sent.pop("stream", None)
    timings = post(server, "/completion", sent)["timings"]
    return {"cache_n": int(timings["cache_n"]), "prompt_n": int(timings["prompt_n"])}


def n_tokens(server: EmbeddedServer, text: str) -> int:
    return len(post(server, "/tokenize", {"content": text, "add_special": True})["tokens"])


@pytest.mark.parametrize(("placement", "slot"), [("end", 0), ("top", 1)])
def test_recall_change_costs_the_tail_at_the_end_and_everything_at_the_top(
    clean_server: EmbeddedServer, placement: str, slot: int
) -> None:
    # each turn's recall alone (kept in history, the first one would stay: tests/test_recall_pins)
    eng = RecallEngine(RecallSettings(keep_in_history=False), StaticSource({CHAT: MEMORIES}))

    def body(turn: int, gen: GenType) -> tuple[dict[str, Any], Any]:
        raw = {"prompt": prompt(turn, placement), "stop": [f"\n{USER}:"], "cache_prompt": True}
        out = eng.apply(raw, chat=CHAT, character=CHAR, gen_type=gen)
        return out.body, out.telemetry

    first, t1 = body(1, GenType.NORMAL)
    assert t1.memory_ids == ("b#0",)
    send(clean_server, first, slot)
    regen, t_regen = body(1, GenType.REGENERATE)
    assert regen == first and t_regen.decision.value == "reused"
    again = send(clean_server, regen, slot)
    total = n_tokens(clean_server, first["prompt"])
    assert again["cache_n"] >= total - 1  # the reused recall keeps the whole prompt cached
    second, t2 = body(2, GenType.NORMAL)
    assert t2.memory_ids == ("b#1",) and t2.changed is True
    cost = send(clean_server, second, slot)
    before = n_tokens(clean_server, first["prompt"][: t1.position])
    second_total = n_tokens(clean_server, second["prompt"])
    assert cost["cache_n"] + cost["prompt_n"] == second_total
    if placement == "end":
        # everything above the first injection stays cached: only the tail re-prefills
        assert cost["cache_n"] >= before - 2
        assert cost["prompt_n"] <= second_total - before + 2
        assert cost["prompt_n"] < second_total // 4
    else:
        # the change is at the top: the whole chat below it re-prefills
        assert cost["cache_n"] <= before + 2
        assert cost["prompt_n"] > second_total * 3 // 4
