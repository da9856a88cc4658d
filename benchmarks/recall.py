"""Benchmark: what memory recall costs the cached prompt, by where the macro sits.

One scripted SillyTavern session (a 1:1 chat, non-instruct text completion, ``\\nSeraphina:``
tail, scripted messages so every variant sees the same chat) is replayed on one llama-server slot
(``id_slot`` 0, ``cache_prompt: true``), once per placement of the recall macro, the slot erased
between variants. The chat has the proportions of a real roleplay: a card of ~1,300 characters,
16 opening messages, user messages of ~150 characters and replies of ~450, so the prompt grows
from about 7,000 to 14,000 characters — as many tokens, since the tiny model's tokenizer gives
about one token per character (a real model's would give a quarter as many). Each user turn is
a normal generation, every third one followed by a swipe. Recall runs through
:class:`kvtui.recall.RecallEngine` with its default settings (budgets counted with the server's
``/tokenize``) on 24 memories whose keywords are words of the chat's prose, so the recalled set
changes from turn to turn.

Variants: recall off (no macro); the macro as an Author's Note at depth 0 (after the last user
message) and at depth 1 (before it); the macro in the story string (the top of the prompt; only
the first few turns, each re-prefills the whole chat); and the stable long-term block in the story
string (rebuilt every 5 new memories; a new memory is written every second turn) with per-turn
recall at depth 0. Reported per variant: the hit ratio (``cache_n`` / all prompt tokens, every
request after the first, which is the same cold prefill for all), prompt tokens processed, the
median tokens re-prefilled per turn and how many of them are beyond recall off, next to the size
of the recall injected. Target (issue 16): depth 0 within two points of recall off. Whatever the
prompt size, depth 0 costs exactly the injected text per turn; the hit-ratio points are that
text's share of the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import Context, Figure, heading, median, note, start_server
from benchmarks.st import USER, Prose, st_body, story_string
from benchmarks.wire import Wire
from kvtui.recall import RecallEngine, RecallSettings, StaticSource
from kvtui.recall.memories import Memory
from kvtui.slots import GenType

NAME = "recall"
CHAR = "Seraphina"
CHAT = "recall bench"
SLOT_CTX = 16384  # the tiny model's training context: the most one slot can have
KEYWORDS = (
    "bridge lantern river tower wolf raven herb potion cloak moon mist valley "
    "village gate blade arrow map trail camp fire oak stone song promise"
).split()
VARIANTS = ("off", "depth 0", "depth 1", "story string", "long-term top + depth 0")


@dataclass
class Totals:
    prompt_n: int = 0
    cache_n: int = 0
    prompt_ms: float = 0.0
    per_turn: list[int] = field(default_factory=list)
    injected: list[int] = field(default_factory=list)  # tokens of recall injected per turn

    @property
    def ratio(self) -> float:
        total = self.prompt_n + self.cache_n
        return 100.0 * self.cache_n / total if total else 0.0


def _memories(count: int) -> list[Memory]:
    prose = Prose(16)
    return [
        Memory(f"bench#{i}", i, f"[{i + 1:03}]", f"{prose.sentence(10)} ({KEYWORDS[i]})",
               (KEYWORDS[i],), order=i)
        for i in range(count)
    ]  # fmt: skip


def _script(turns: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The opening history and, per turn, (user message, scripted reply)."""
    prose = Prose(4)
    opening = [(CHAR, prose.line(450)) if i % 2 else (USER, prose.line(150)) for i in range(16)]
    return opening, [(prose.line(150), prose.line(450)) for _ in range(turns)]


def _prompt(story: str, lines: list[tuple[str, str]], variant: str) -> str:
    shown = [f"{who}: {text}" for who, text in lines]
    if variant in ("depth 0", "long-term top + depth 0"):
        shown.append("{{kvtui_memories}}")
    elif variant == "depth 1":
        shown.insert(len(shown) - 1, "{{kvtui_memories}}")
    if variant == "story string":
        story = story.replace("\n", "\n{{kvtui_memories}}\n", 1)
    elif variant.startswith("long-term"):
        story = story.replace("\n", "\n{{kvtui_longterm}}\n", 1)
    return story + "\n".join(shown) + f"\n{CHAR}:"


def _replay(wire: Wire, variant: str, turns: int) -> Totals:
    story = story_string(
        CHAR,
        "Write Seraphina's next reply in a fictional chat between Seraphina and Alex.",
        Prose(1).paragraph(1300),
        Prose(2).paragraph(200),
        Prose(3).paragraph(200),
    )
    opening, script = _script(turns)
    start = 12 if variant.startswith("long-term") else 24
    source = StaticSource({CHAT: _memories(start)})
    # budgets in the server's own tokens (the tiny model's tokenizer is nearly one per character)
    eng = RecallEngine(
        RecallSettings(longterm_batch=5), source, count_tokens=lambda text: _tokens(wire, text)
    )
    wire.post("/slots/0?action=erase", {})
    lines = list(opening)
    totals = Totals()
    first = True
    for turn, (user, reply) in enumerate(script):
        lines.append((USER, user))
        if variant.startswith("long-term") and turn % 2 == 1 and start < len(KEYWORDS):
            start += 1
            source.by_chat[CHAT] = _memories(start)
        gens = [GenType.NORMAL] + ([GenType.SWIPE] if turn % 3 == 2 else [])
        for gen in gens:
            body = st_body(_prompt(story, lines, variant), [f"\n{USER}:"], stream=False)
            out = eng.apply(body, chat=CHAT, character=CHAR, gen_type=gen)
            body, t = out.body, out.telemetry
            body.update(id_slot=0, n_predict=4, temperature=0)
            answer: dict[str, Any] = wire.post("/completion", body).json()
            timings = answer.get("timings")
            if not isinstance(timings, dict):
                raise RuntimeError(f"{variant}, turn {turn}: llama-server answered {answer}")
            if not first:
                totals.prompt_n += int(timings["prompt_n"])
                totals.cache_n += int(timings["cache_n"])
                totals.prompt_ms += float(timings.get("prompt_ms", 0.0))
            first = False
            if gen is GenType.NORMAL and turn > 0:
                totals.per_turn.append(int(timings["prompt_n"]))
                at = t.position
                text = body["prompt"][at : at + t.chars] if at is not None else ""
                totals.injected.append(_tokens(wire, text))
        lines.append((CHAR, reply))
    return totals


_TOKENS: dict[str, int] = {}  # the server's token counts (one model for the whole run)


def _tokens(wire: Wire, text: str) -> int:
    if not text:
        return 0
    if text not in _TOKENS:
        _TOKENS[text] = len(wire.post("/tokenize", {"content": text}).json()["tokens"])
    return _TOKENS[text]


async def run(ctx: Context) -> None:
    heading("Recall: the cost of each placement of the recall macro")
    turns = ctx.reps(12, 6)
    top_turns = ctx.reps(4, 3)
    server = start_server(ctx, NAME, n_slots=1, n_ctx=SLOT_CTX, cache_ram_mib=0)
    wire = Wire(server.url)
    results: dict[str, Totals] = {}
    try:
        note(
            f"{turns} user turns ({top_turns} for the story string), a swipe after every third,"
            f" one slot of {SLOT_CTX} tokens"
        )
        for variant in VARIANTS:
            results[variant] = _replay(
                wire, variant, top_turns if variant == "story string" else turns
            )
    finally:
        wire.close()
        server.stop()
    off = results["off"].ratio
    off_turn = median(results["off"].per_turn)
    for variant, t in results.items():
        target, ok = None, None
        if variant == "depth 0":
            target, ok = "within 2 points of off", abs(t.ratio - off) <= 2.0
        ctx.add(Figure(NAME, f"{variant}: hit ratio", t.ratio, "%", target, ok, headline=True))
        ctx.add(
            Figure(
                NAME,
                f"{variant}: prompt tokens processed",
                t.prompt_n,
                "tok",
                note=f"{len(t.per_turn) + 1} turns",
            )
        )
        per_turn = median(t.per_turn) if t.per_turn else None
        ctx.add(
            Figure(
                NAME,
                f"{variant}: median tokens re-prefilled per turn",
                per_turn,
                "tok",
                headline=True,
            )
        )
        ctx.add(Figure(NAME, f"{variant}: server prefill time", t.prompt_ms / 1000.0, "s"))
        if variant != "off" and per_turn is not None:
            extra = per_turn - off_turn
            injected = median(t.injected) if t.injected else 0.0
            ctx.add(
                Figure(
                    NAME,
                    f"{variant}: re-prefilled per turn beyond off",
                    extra,
                    "tok",
                    note=f"recall injected per turn: median {injected:.0f} tok",
                )
            )
