"""Benchmark 5: a scripted SillyTavern session through kvtui, and straight to llama-server.

The session (61 generations) is a four-member group chat (Seraphina, Kael, Mira, Brann, group
"swap" mode: each speaker's prompt starts with their own story string: a shared system prompt,
their card, the scenario and the persona) on a server with two slots; then the user edits their
last message and regenerates the round, switches to the 1:1 chat with Seraphina for a few turns,
comes back to the group, and llama-server restarts in the middle; swipes along the way. Requests
are SillyTavern's (no ``id_slot``, ``cache_prompt``, streamed, ``\\nName:`` tails, group stop
strings) and each is preceded, like in SillyTavern, by the write of the chat file that makes its
chat the active one. Replies in the chat are scripted (the same text in every run), so every
variant sees the same prompts whatever the tiny model generates.

Variants, each on a fresh server: through ``kvtui proxy`` (default settings: autosave every 5
messages) on a server without the host-memory prompt cache; straight to llama-server without it
(``cache_ram_mib=0``) and with it (512 MiB, llama-server's own answer to the problem); and, for
information, kvtui on a server with it. Reported per variant: prompt tokens processed (sum of
``timings.prompt_n``), tokens served from cache (sum of ``cache_n``), the hit ratio, the server's
prefill time and the wall time of the requests.
"""

from __future__ import annotations

import os
import random
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Context,
    Figure,
    heading,
    median,
    note,
    start_server,
)
from benchmarks.proxy import NAME as PROXY_NAME
from benchmarks.proxy import start_proxy
from benchmarks.replay_accounting import report_warmth, script_turns
from benchmarks.st import (
    USER,
    Prose,
    chat_prompt,
    edit_last_user_line,
    group_stop,
    last_sse_event,
    st_body,
    story_string,
    unmute_all,
    write_chat_line,
)
from benchmarks.wire import Wire
from kvtui.embedded.server import EmbeddedServer
from kvtui.sillytavern import copy_sample
from kvtui.sillytavern.sample import GROUP_CHAT_ID, GROUP_ID, SOLO_CHAT_ID

NAME = "replay"
MEMBERS = ["Seraphina", "Kael", "Mira", "Brann"]
SLOT_CTX = 8192
N_PREDICT = 40
PAIRS = [("Seraphina", "Kael"), ("Mira", "Brann"), ("Kael", "Mira"), ("Brann", "Seraphina"),
         ("Kael", "Brann"), ("Seraphina", "Mira")]  # fmt: skip


@dataclass(frozen=True)
class Write:
    """SillyTavern writes a chat file (a new line, or an edit)."""

    chat: str
    name: str
    is_user: bool
    text: str
    edit: bool = False


@dataclass(frozen=True)
class Generate:
    chat: str
    speaker: str
    kind: str
    phase: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Restart:
    """llama-server restarts (the user restarts it, or it crashed and came back)."""


Step = Write | Generate | Restart


class SessionScript:
    """Builds the session: the steps in order, with every prompt fixed in advance."""

    def __init__(self) -> None:
        self.prose = Prose(2024)
        self.rng = random.Random(99)
        prose = self.prose
        system = (
            "Write the next reply in a never-ending fictional roleplay in a group chat between "
            f"{USER} and the Forest Party. Stay in character, be vivid, avoid repetition. "
            + prose.paragraph(200)
        )
        persona = f"{USER} is a wandering cartographer with a torn map. " + prose.paragraph(50)
        scenario = "The Forest Party camps at the edge of the Eldoria woods. " + prose.paragraph(40)
        solo_scenario = f"{USER} wakes up in Seraphina's glade after a fall. " + prose.paragraph(40)
        cards = {m: f"{m} of the Forest Party. " + prose.paragraph(320) for m in MEMBERS}
        self.stories = {m: story_string(m, system, cards[m], scenario, persona) for m in MEMBERS}
        seraphina = cards["Seraphina"]
        self.solo_story = story_string("Seraphina", system, seraphina, solo_scenario, persona)
        self.lines: dict[str, list[tuple[str, str]]] = {
            "group": [
                ("Seraphina", "*Seraphina lights a small lantern.* Welcome to our camp."),
                (USER, "Thank you. Are we all ready for tomorrow?"),
                ("Kael", "*Kael nods.* The old bridge is two hours east. We leave at dawn."),
                ("Mira", "*Mira grins.* I packed healing tea for everyone. Even Brann."),
                (USER, "Where is Brann, anyway?"),
                ("Seraphina", "*She points at a snoring shape by the fire.* Asleep, as always."),
            ],
            "solo": [
                ("Seraphina", "*Seraphina kneels beside you and smiles.* You're safe now."),
                (USER, "*I sit up slowly.* Where am I? My head hurts."),
                ("Seraphina", "*She touches your forehead.* In my glade, deep in the woods."),
                (USER, "*I take the cup.* Thank you. Why are you helping me?"),
            ],
        }
        self.steps: list[Step] = []
        self.phase = "group"

    def _text(self, low: int, high: int) -> str:
        return self.prose.line(self.rng.randint(low, high))

    def user(self, chat: str, text: str | None = None) -> None:
        text = text or self._text(25, 55)
        self.lines[chat].append((USER, text))
        self.steps.append(Write(chat, USER, True, text))

    def _generate(self, chat: str, speaker: str, kind: str) -> None:
        story = self.stories[speaker] if chat == "group" else self.solo_story
        stop = group_stop(speaker, MEMBERS) if chat == "group" else [f"\n{USER}:"]
        prompt = chat_prompt(story, self.lines[chat], speaker)
        body = st_body(prompt, stop, stream=True, n_predict=N_PREDICT)
        self.steps.append(Generate(chat, speaker, kind, self.phase, body))

    def reply(self, chat: str, speaker: str, kind: str = "normal") -> None:
        self._generate(chat, speaker, kind)
        text = self._text(35, 75)
        self.lines[chat].append((speaker, text))
        self.steps.append(Write(chat, speaker, False, text))

    def swipe(self, chat: str) -> None:
        """A new alternative for the last reply: the same prompt again (same number of lines)."""
        speaker, _ = self.lines[chat].pop()
        self._generate(chat, speaker, "swipe")
        self.lines[chat].append((speaker, self._text(35, 75)))

    def edit_and_regenerate(self, pair: tuple[str, str]) -> None:
        """The user edits their last message; regenerate replaces the round's replies."""
        lines = self.lines["group"]
        last_user = max(i for i, (who, _) in enumerate(lines) if who == USER)
        del lines[last_user + 1 :]
        text = lines[last_user][1] + " " + self._text(15, 30)
        lines[last_user] = (USER, text)
        self.steps.append(Write("group", USER, True, text, edit=True))
        for speaker in pair:
            self.reply("group", speaker, "regenerate")

    def group_rounds(self, count: int, swipe_every: int, start: int = 0) -> None:
        for i in range(count):
            self.user("group")
            for speaker in PAIRS[(start + i) % len(PAIRS)]:
                self.reply("group", speaker)
            if swipe_every and (i + 1) % swipe_every == 0:
                self.swipe("group")

    @classmethod
    def build(cls) -> list[Step]:
        s = cls()
        s.group_rounds(7, swipe_every=2)
        s.edit_and_regenerate(PAIRS[6 % len(PAIRS)])
        s.phase = "1:1 chat"
        for turn in range(5):
            s.user("solo")
            s.reply("solo", "Seraphina")
            if turn in (1, 3):
                s.swipe("solo")
        s.phase = "group again"
        s.group_rounds(2, swipe_every=0, start=7)
        s.steps.append(Restart())
        s.phase = "after restart"
        s.group_rounds(10, swipe_every=1, start=9)
        return s.steps


@dataclass
class Tally:
    """What one variant's session cost."""

    prompt_n: int = 0
    cache_n: int = 0
    prompt_ms: float = 0.0
    seconds: float = 0.0
    requests: int = 0
    sizes: list[int] = field(default_factory=list)
    by_phase: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    timings: list[dict[str, Any]] = field(default_factory=list)
    state_dir: Path | None = None
    proxy_log: Path | None = None
    save_dir: Path | None = None

    @property
    def hit_ratio(self) -> float:
        total = self.prompt_n + self.cache_n
        return self.cache_n / total if total else 0.0


def _chat_files(st_dir: Path) -> dict[str, Path]:
    return {
        "group": st_dir / "group chats" / f"{GROUP_CHAT_ID}.jsonl",
        "solo": st_dir / "chats" / "Seraphina" / f"{SOLO_CHAT_ID}.jsonl",
    }


_BOOKED = re.compile(r"\[route\] .+ · (?:slot \d+|no slot)")


def wait_booked(proxy_log: Path | None, count: int, timeout: float = 120.0) -> None:
    """Wait until kvtui has booked ``count`` replies (its one decision line each comes after
    the reply's autosave): a user restarts llama-server a while after the last reply, never
    while kvtui is still saving it."""
    if proxy_log is None:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = proxy_log.read_text(errors="replace") if proxy_log.exists() else ""
        if len(_BOOKED.findall(text)) >= count:
            return
        time.sleep(0.1)
    note(f"kvtui had not booked {count} replies after {timeout:.0f} s; restarting anyway")


def _replay(
    steps: list[Step],
    url: str,
    server: EmbeddedServer,
    st_dir: Path,
    restarts: bool = True,
    proxy_log: Path | None = None,
) -> Tally:
    files = _chat_files(st_dir)
    wire = Wire(url)
    tally = Tally()
    try:
        for step in steps:
            if isinstance(step, Write):
                if step.edit:
                    edit_last_user_line(files[step.chat], step.text)
                else:
                    write_chat_line(files[step.chat], step.name, step.is_user, step.text)
            elif isinstance(step, Restart):
                if restarts:
                    wait_booked(proxy_log, tally.requests)
                    wire.close()
                    server.restart()
            else:
                reply = wire.post("/completion", step.body)
                if reply.status != 200:
                    raise RuntimeError(f"HTTP {reply.status}: {reply.body[:400]!r}")
                timings = last_sse_event(reply.body)["timings"]
                tally.prompt_n += int(timings["prompt_n"])
                tally.cache_n += int(timings["cache_n"])
                tally.prompt_ms += float(timings["prompt_ms"])
                tally.seconds += reply.seconds
                tally.requests += 1
                tally.sizes.append(int(timings["prompt_n"]) + int(timings["cache_n"]))
                tally.by_phase[step.phase] += int(timings["prompt_n"])
                tally.timings.append(dict(timings))
    finally:
        wire.close()
    return tally


def _ideal(url: str, generations: list[Generate]) -> Tally:
    """Prefilled and cached tokens if every prompt reused the longest prefix of any earlier
    prompt (unlimited cache, no restart): the floor for any caching scheme. llama-server always
    evaluates at least one token of a prompt."""
    wire = Wire(url)
    try:
        seen: list[str] = []
        floor = Tally()
        for step in generations:
            body = {"content": step.body["prompt"], "add_special": True}
            tokens = wire.post("/tokenize", body).json()["tokens"]
            text = "".join(chr(0x100 + t) for t in tokens)  # one character per token
            best = max((_common_prefix(text, old) for old in seen), default=0)
            best = min(best, len(text) - 1)
            floor.prompt_n += len(text) - best
            floor.cache_n += best
            floor.by_phase[step.phase] += len(text) - best
            seen.append(text)
    finally:
        wire.close()
    return floor


def _common_prefix(a: str, b: str) -> int:
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


_EVENT = re.compile(r"\[([a-z-]+)\]")


IDEAL = "ideal: 4 slots, no restart, unlimited RAM cache"
RAM = "direct, default cache-ram"
KVTUI_RAM = "kvtui proxy, default cache-ram"
POLICY = "kvtui proxy, default cache-ram, RAM-aware policy"
POLICY_ENV = {
    "KVTUI_SKIP_RESTORE_WHEN_RAM_CACHED": "true",
    "KVTUI_SAVE_WHEN_PROTECTIVE": "true",
}


def policy_supported() -> bool:
    """Whether kvtui's settings (so its router) know the RAM-aware policy yet."""
    from kvtui.settings import Settings

    return "skip_restore_when_ram_cached" in Settings.model_fields


def _run_variant(ctx: Context, steps: list[Step], variant: str, rep: int) -> Tally:
    # "default cache-ram": llama-server's own default (8192 MiB), as users run it.
    kvtui = variant.startswith("kvtui")
    cache_ram: int | None = None if "cache-ram" in variant else 0
    slots, restarts = 2, True
    if variant == IDEAL:
        # 64 GiB: llama-server caps its memory at n_ctx tokens unless a MiB limit raises it.
        slots, cache_ram, restarts = 4, 65536, False
    tag = f"{NAME}-{re.sub(r'[^a-z0-9]+', '-', variant.lower()).strip('-')}-{rep}"
    server = start_server(ctx, tag, n_slots=slots, n_ctx=slots * SLOT_CTX, cache_ram_mib=cache_ram)
    assert server.save_dir is not None
    st_dir = copy_sample(ctx.dir(tag) / "st-data")
    unmute_all(st_dir / "groups" / f"{GROUP_ID}.json")
    proxy = None
    if kvtui:
        saved = {k: os.environ.get(k) for k in POLICY_ENV}
        if variant == POLICY:
            os.environ.update(POLICY_ENV)
        try:
            proxy = start_proxy(ctx, tag, server.url, server.save_dir, st_dir)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    try:
        try:
            url = proxy.url if proxy else server.url
            booked = proxy.log if proxy else None
            tally = _replay(steps, url, server, st_dir, restarts, booked)
        except RuntimeError as err:
            for _ in range(100):  # a stopped server takes a moment to exit
                if not server.running:
                    break
                time.sleep(0.1)
            if not server.running:  # stopped from outside (a shared machine): not a result
                raise ServerGone(f"{variant}: llama-server stopped during the run: {err}") from err
            raise
    finally:
        if proxy is not None:
            proxy.stop()
        server.stop()
    tally.save_dir = server.save_dir
    if proxy is not None:
        tally.state_dir = ctx.dir(f"{PROXY_NAME}-{tag.replace(' ', '-')}") / "state"
        tally.proxy_log = proxy.log
    if proxy is not None and proxy.log is not None:
        log = proxy.log.read_text(errors="replace")
        tally.events.update(_EVENT.findall(log))
        tally.errors = [line for line in log.splitlines() if " ✗ " in line]
    return tally


class ServerGone(RuntimeError):
    """The variant's llama-server process exited while the session was replayed."""


def _run_with_retry(ctx: Context, steps: list[Step], variant: str, rep: int) -> Tally:
    """A variant's run, once more (said in a note) when its server was stopped from outside."""
    for attempt in range(3):
        try:
            return _run_variant(ctx, steps, variant, rep + 10 * attempt)
        except ServerGone as err:
            note(f"{err}; running it again")
    raise RuntimeError(f"{variant}: llama-server kept stopping during the run")


VARIANTS = ("kvtui proxy", "direct", RAM, KVTUI_RAM, IDEAL)


async def run(ctx: Context) -> None:
    heading("5. SillyTavern session replay: kvtui versus llama-server alone")
    steps = SessionScript.build()
    generations = [s for s in steps if isinstance(s, Generate)]
    kinds = Counter(s.kind for s in generations)
    note(
        f"{len(generations)} generations ({', '.join(f'{n} {k}' for k, n in kinds.items())}), "
        "4 group members on 2 slots, a 1:1 chat and back, a server restart; "
        f"slot context {SLOT_CTX}, {N_PREDICT} tokens generated per request"
    )
    tokenizer = start_server(ctx, f"{NAME}-tokenize", n_slots=1, n_ctx=SLOT_CTX)
    try:
        await _run(ctx, steps, generations, tokenizer.url)
    finally:
        tokenizer.stop()


async def _run(
    ctx: Context, steps: list[Step], generations: list[Generate], tokenize_url: str
) -> None:
    floor = _ideal(tokenize_url, generations)
    variants = VARIANTS + ((POLICY,) if policy_supported() else ())
    reps = ctx.reps(2, 1)
    runs: dict[str, list[Tally]] = {v: [] for v in variants}
    for rep in range(reps):
        order = variants if rep % 2 == 0 else tuple(reversed(variants))
        for variant in order:
            runs[variant].append(_run_with_retry(ctx, steps, variant, rep))
            last = runs[variant][-1]
            note(f"run {rep + 1}, {variant}: {last.prompt_n:,} prefilled, {last.seconds:.1f} s")
    sizes = runs["direct"][0].sizes
    note(
        f"prompt sizes: {min(sizes):,} to {max(sizes):,} tokens "
        f"(median {int(statistics.median(sizes)):,})"
    )
    tallies = {v: runs[v][0] for v in variants}
    for variant in variants:
        counts = {t.prompt_n for t in runs[variant]}
        if len(counts) > 1:
            note(f"{variant}: prefilled tokens differed between runs: {sorted(counts)}")
        t = tallies[variant]
        prefilled = median([x.prompt_n for x in runs[variant]])
        cached = median([x.cache_n for x in runs[variant]])
        ratio = cached / (cached + prefilled) * 100
        target, ok = (">= 90%", ratio >= 90) if variant == "kvtui proxy" else (None, None)
        ctx.add(
            Figure(NAME, f"{variant}: prompt tokens processed", prefilled, "tok", headline=True)
        )
        ctx.add(Figure(NAME, f"{variant}: tokens served from cache", cached, "tok"))
        ctx.add(Figure(NAME, f"{variant}: hit ratio", ratio, "%", target, ok, headline=True))
        prefill_s = median([x.prompt_ms for x in runs[variant]]) / 1000
        ctx.add(Figure(NAME, f"{variant}: server prefill time", prefill_s, "s"))
        wall = median([x.seconds for x in runs[variant]])
        ctx.add(Figure(NAME, f"{variant}: wall time of the requests", wall, "s", headline=True))
        phases = ", ".join(f"{p} {n:,}" for p, n in t.by_phase.items())
        note(f"{variant}: prefilled by phase: {phases}")
        if t.events:
            note(f"{variant}: kvtui events: {dict(sorted(t.events.items()))}")
        for line in t.errors[:4]:
            note(f"{variant}: kvtui logged: {line[:150]}…")
    ctx.add(
        Figure(
            NAME,
            "floor (longest prefix ever seen reused): prompt tokens",
            floor.prompt_n,
            "tok",
            note="no caching scheme can prefill less",
        )
    )
    ctx.add(Figure(NAME, "floor: hit ratio", floor.hit_ratio * 100, "%", headline=True))
    phases = ", ".join(f"{p} {n:,}" for p, n in floor.by_phase.items())
    note(f"floor: prefilled by phase: {phases}")
    kv = median([x.prompt_n for x in runs["kvtui proxy"]])
    plain = median([x.prompt_n for x in runs["direct"]])
    fewer = plain / kv if kv else float("inf")
    ctx.add(
        Figure(
            NAME, "direct / kvtui prefilled tokens (no RAM cache)", fewer, "x", ">= 3x", fewer >= 3
        )
    )
    turns = script_turns(steps)
    await report_warmth(ctx, runs, turns, tokenize_url, policy_supported(), floor.prompt_n)
