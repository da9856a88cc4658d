"""Benchmark: what memory recall costs the cached prompt, by where the macro sits.

Scripted SillyTavern sessions (a 1:1 chat, non-instruct text completion, ``\\nSeraphina:`` tail,
scripted messages so every variant sees the same chat) are replayed on one llama-server slot
(``id_slot`` 0, ``cache_prompt: true``), once per placement of the recall macro, the slot erased
between variants. Two sessions: **roleplay** (a card of ~1,300 characters, 16 opening messages,
user messages of ~150 characters and replies of ~450) and **short** (a card of ~900, 24 opening
messages of ~110, user messages of ~110 and replies of ~140). Each user turn is a normal
generation, every third one followed by a swipe.

**The reply stays in the slot, as in real use.** SillyTavern sends back the reply the model
wrote, and the slot still holds it after the prompt; so after each generation the slot is
extended with the scripted reply (one request of the prompt plus the reply, not counted), as if
the model had written it. Without recall the next turn then prefills only the user's new message.
(Until December 2026 this benchmark let the scripted reply be prefilled every turn, which hid
the main cost of a depth-0 recall: the reply written after it.)

Recall runs through :class:`kvtui.recall.RecallEngine` with its default settings (budgets
counted with the server's ``/tokenize``) on 24 memories whose keywords are words of the chat's
prose, so the recalled set changes from turn to turn. Variants: recall off (no macro); the macro
as an Author's Note at depth 0 (after the last user message) and at depth 1 (before it), each
also with ``keep_in_history`` (each turn's recall stays where it was injected,
:mod:`kvtui.recall.pins`); the macro in the story string (the top of the prompt; the first few
turns only, each re-prefills the whole chat); the stable long-term block in the story string
(rebuilt every 5 new memories; a new memory every second turn) with per-turn recall at depth 0
kept in history; and, on the short session, three times the turns (off, kept, not kept): the
kept recall fills ``keep_budget`` and the replay shows what a long chat settles to. After each
reply the recall's refresh runs as the proxy runs it
(:func:`kvtui.recall.refresh.plan_refresh`: the prompt without this turn's recall plus the
reply, prefilled before the next request and counted apart, as background work); the variants
marked "without refresh" leave it out. Reported per variant: the hit ratio (``cache_n`` / all
prompt tokens of every request after the first, which is the same cold prefill for all), the
median tokens prefilled per turn, how many of them are beyond recall off, and the recall
injected per turn. Target
(issue 16): depth 0 within two points of recall off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import Context, Figure, heading, median, note, start_server
from benchmarks.st import USER, Prose, st_body, story_string
from benchmarks.wire import Wire
from kvtui.recall import RecallEngine, RecallSettings, StaticSource
from kvtui.recall.memories import Memory
from kvtui.recall.refresh import plan_refresh
from kvtui.slots import GenType

NAME = "recall"
CHAR = "Seraphina"
CHAT = "recall bench"
SLOT_CTX = 16384  # the tiny model's training context: the most one slot can have
KEYWORDS = (
    "bridge lantern river tower wolf raven herb potion cloak moon mist valley "
    "village gate blade arrow map trail camp fire oak stone song promise"
).split()
KEPT = " kept"
NO_REFRESH = " without refresh"
LONG = ", 3x the turns"  # the kept recall fills its budget: what a long chat settles to
VARIANTS = {
    "roleplay": (
        "off",
        "depth 0",
        "depth 0" + NO_REFRESH,
        "depth 0 kept",
        "depth 1",
        "depth 1" + NO_REFRESH,
        "depth 1 kept",
        "story string",
        "long-term top + depth 0 kept",
    ),
    "short": ("off", "depth 0", "depth 0" + NO_REFRESH, "depth 0 kept", "off" + LONG,
              "depth 0 kept" + LONG, "depth 0" + LONG),
}  # fmt: skip


@dataclass(frozen=True)
class Session:
    card: int
    opening: int
    opening_chars: tuple[int, int]  # user, character
    user: int
    reply: int


SESSIONS = {
    "roleplay": Session(card=1300, opening=16, opening_chars=(150, 450), user=150, reply=450),
    "short": Session(card=900, opening=24, opening_chars=(110, 110), user=110, reply=140),
}


@dataclass
class Totals:
    prompt_n: int = 0
    cache_n: int = 0
    prompt_ms: float = 0.0
    per_turn: list[int] = field(default_factory=list)
    injected: list[int] = field(default_factory=list)  # tokens of recall injected per turn
    background_n: int = 0  # prefilled by recall's refresh after the replies (not waited for)
    refreshes: int = 0

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


def _script(s: Session, turns: int) -> tuple[list[tuple[str, str]], list[tuple[str, str, str]]]:
    """The opening history and, per turn, (user message, reply, an earlier swipe's reply)."""
    prose = Prose(4)
    u, c = s.opening_chars
    opening = [(CHAR, prose.line(c)) if i % 2 else (USER, prose.line(u)) for i in range(s.opening)]
    script = [(prose.line(s.user), prose.line(s.reply), prose.line(s.reply)) for _ in range(turns)]
    return opening, script


def _prompt(story: str, lines: list[tuple[str, str]], variant: str) -> str:
    shown = [f"{who}: {text}" for who, text in lines]
    if "depth 0" in variant:
        shown.append("{{kvtui_memories}}")
    elif "depth 1" in variant:
        shown.insert(len(shown) - 1, "{{kvtui_memories}}")
    if variant == "story string":
        story = story.replace("\n", "\n{{kvtui_memories}}\n", 1)
    elif variant.startswith("long-term"):
        story = story.replace("\n", "\n{{kvtui_longterm}}\n", 1)
    return story + "\n".join(shown) + f"\n{CHAR}:"


def _replay(wire: Wire, session: Session, variant: str, turns: int) -> Totals:
    story = story_string(
        CHAR,
        "Write Seraphina's next reply in a fictional chat between Seraphina and Alex.",
        Prose(1).paragraph(session.card),
        Prose(2).paragraph(200),
        Prose(3).paragraph(200),
    )
    opening, script = _script(session, turns)
    start = 12 if variant.startswith("long-term") else 24
    source = StaticSource({CHAT: _memories(start)})
    kept = variant.removesuffix(LONG).endswith(KEPT)
    settings = RecallSettings(longterm_batch=5, keep_in_history=kept)
    # budgets in the server's own tokens
    eng = RecallEngine(settings, source, count_tokens=lambda text: _tokens(wire, text))
    wire.post("/slots/0?action=erase", {})
    lines = list(opening)
    totals = Totals()
    first = True
    for turn, (user, reply, other) in enumerate(script):
        lines.append((USER, user))
        if variant.startswith("long-term") and turn % 2 == 1 and start < len(KEYWORDS):
            start += 1
            source.by_chat[CHAT] = _memories(start)
        gens = [GenType.NORMAL] + ([GenType.SWIPE] if turn % 3 == 2 else [])
        for gen in gens:
            body = st_body(_prompt(story, lines, variant), [f"\n{USER}:"], stream=False)
            out = eng.apply(body, chat=CHAT, character=CHAR, gen_type=gen)
            body, t = out.body, out.telemetry
            body.update(id_slot=0, n_predict=1, temperature=0)
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
            # the model "writes" the reply: the slot holds it after the prompt, as in real use
            written = reply if gen is gens[-1] else other
            wire.post("/completion", {**body, "prompt": body["prompt"] + " " + written})
            # what the proxy does next (kvtui.proxy.recallrefresh), counted on its own
            plan = plan_refresh(out, written) if not variant.endswith(NO_REFRESH) else None
            if plan is not None and plan.prompt is not None:
                done = wire.post("/completion", {**body, "prompt": plan.prompt}).json()
                totals.background_n += int(done["timings"]["prompt_n"])
                totals.refreshes += 1
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
    results: dict[tuple[str, str], Totals] = {}
    try:
        note(
            f"{turns} user turns ({top_turns} for the story string), a swipe after every third,"
            f" the reply kept in the slot as in real use, one slot of {SLOT_CTX} tokens"
        )
        for name, variants in VARIANTS.items():
            for variant in variants:
                n = top_turns if variant == "story string" else turns
                n = 3 * n if variant.endswith(LONG) else n
                results[(name, variant)] = _replay(wire, SESSIONS[name], variant, n)
                note(f"{name} / {variant}: {results[(name, variant)].ratio:.1f} %")
    finally:
        wire.close()
        server.stop()
    for (name, variant), t in results.items():
        base = "off" + LONG if variant.endswith(LONG) else "off"
        _report(ctx, name, variant, t, results[(name, base)])


def _report(ctx: Context, name: str, variant: str, t: Totals, off: Totals) -> None:
    label = f"{name}, {variant}"
    target, ok = None, None
    if variant.startswith("depth 0"):
        target, ok = "within 2 points of off", abs(t.ratio - off.ratio) <= 2.0
    ctx.add(Figure(NAME, f"{label}: hit ratio", t.ratio, "%", target, ok, headline=True))
    ctx.add(Figure(NAME, f"{label}: prompt tokens processed", t.prompt_n, "tok"))
    per_turn = median(t.per_turn) if t.per_turn else None
    ctx.add(
        Figure(NAME, f"{label}: median tokens prefilled per turn", per_turn, "tok", headline=True)
    )
    ctx.add(Figure(NAME, f"{label}: server prefill time", t.prompt_ms / 1000.0, "s"))
    if t.refreshes:
        ctx.add(
            Figure(
                NAME,
                f"{label}: prefilled by the refresh after each reply (in the background)",
                t.background_n / t.refreshes,
                "tok",
                note=f"{t.refreshes} refreshes",
            )
        )
    if variant != "off" and per_turn is not None and off.per_turn:
        injected = median(t.injected) if t.injected else 0.0
        ctx.add(
            Figure(
                NAME,
                f"{label}: prefilled per turn beyond off",
                per_turn - median(off.per_turn),
                "tok",
                note=f"recall injected per turn: median {injected:.0f} tok",
            )
        )
