"""Benchmark 2: what kvtui's routing proxy adds to a request.

The proxy runs as users run it: ``kvtui proxy`` in its own process (with a SillyTavern data
directory, the automatic mode, and without one), and inside the dashboard (a real ``kvtui``
process in a pseudo-terminal, where the proxy shares the event loop with the Textual app). The
same SillyTavern-shaped two-token ``/completion`` on a cached prompt is sent directly to
llama-server and through each proxy, rotating request by request; then a long streamed generation
(2000 tokens, ``ignore_eos``) directly and through the proxies, alternating. The client is a plain
kept-alive ``http.client`` connection, identical for every side.

The floor is a **bare relay** (:mod:`benchmarks.bare_relay`): kvtui's own uvicorn + relay stack
(:class:`kvtui.proxy.relay.Relay`) in its own process, forwarding bytes with no routing, measured
in the same rotation. kvtui minus the bare relay is what routing costs (target: p50 ≤ 1 ms per
generation request). With ``$BENCH_BASELINE_KVTUI_COMMAND`` set, another kvtui (the code before
a change) runs as one more side, ``proxy (baseline)``, in the same rotation.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    Context,
    Figure,
    heading,
    kvtui_command,
    median,
    ms,
    note,
    percentile,
    start_server,
    stop_process,
    wait_for_port,
)
from benchmarks.st import (
    USER,
    Prose,
    chat_prompt,
    group_stop,
    last_sse_event,
    st_body,
    story_string,
)
from benchmarks.wire import Wire
from kvtui.embedded.server import free_port
from kvtui.sillytavern import copy_sample

NAME = "proxy"
MEMBERS = ["Seraphina", "Kael", "Mira", "Brann"]
TARGETED = ("proxy", "proxy in the dashboard")
"""The sides the targets apply to (how users run kvtui with SillyTavern)."""
BARE = "bare relay"
"""The floor: the same relay stack with no routing."""
REPO = Path(__file__).resolve().parent.parent
BASELINE_ENV = "BENCH_BASELINE_KVTUI_COMMAND"
"""A second kvtui (e.g. the code before a change) run as one more side, ``proxy (baseline)``,
in the same rotation: a before/after comparison measured under the same load."""
BASELINE = "proxy (baseline)"


def baseline_command() -> list[str] | None:
    value = os.environ.get(BASELINE_ENV, "").strip()
    return shlex.split(value) if value else None


@dataclass
class ProxyProcess:
    """A kvtui process serving the proxy at ``url``."""

    name: str
    pid: int
    url: str
    log: Path | None
    stop: Callable[[], None]

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_proxy(
    ctx: Context,
    name: str,
    server_url: str,
    save_dir: Path,
    st_dir: Path | None,
    command: list[str] | None = None,
) -> ProxyProcess:
    """``kvtui proxy`` on a free port, with its own state directory; waits until it answers.
    ``command`` starts another kvtui (the baseline side) instead of this one."""
    home = ctx.dir(f"{NAME}-{name.replace(' ', '-').replace('(', '').replace(')', '')}")
    port = free_port()
    cmd = (command or kvtui_command()) + ["proxy", "--server", server_url]
    cmd += ["--save-dir", str(save_dir)]
    if st_dir is not None:
        cmd += ["--st-dir", str(st_dir)]
    cmd += ["--listen", f"127.0.0.1:{port}"]
    env = dict(os.environ, KVTUI_STATE_DIR=str(home / "state"))
    log = home / "proxy.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(url)
    except TimeoutError:
        stop_process(proc)
        raise RuntimeError(f"kvtui proxy did not start:\n{log.read_text()[-2000:]}") from None
    return ProxyProcess(name, proc.pid, url, log, lambda: stop_process(proc))


def start_bare_relay(ctx: Context, server_url: str) -> ProxyProcess:
    """The bare relay (no routing) on a free port; waits until it answers."""
    home = ctx.dir(f"{NAME}-bare-relay")
    port = free_port()
    cmd = [sys.executable, "-m", "benchmarks.bare_relay", "--upstream", server_url]
    cmd += ["--listen", f"127.0.0.1:{port}"]
    log = home / "relay.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(url)
    except TimeoutError:
        stop_process(proc)
        raise RuntimeError(f"the bare relay did not start:\n{log.read_text()[-2000:]}") from None
    return ProxyProcess(BARE, proc.pid, url, log, lambda: stop_process(proc))


def start_dashboard(
    ctx: Context, name: str, server_url: str, save_dir: Path, st_dir: Path
) -> ProxyProcess:
    """The ``kvtui`` dashboard in a pty, its proxy (automatic mode, on by default) on a free
    port; waits until the proxy answers."""
    from benchmarks.idle import Terminal

    home = ctx.dir(f"{NAME}-{name.replace(' ', '-')}")
    port = free_port()
    argv = kvtui_command() + ["--server", server_url, "--save-dir", str(save_dir)]
    argv += ["--st-dir", str(st_dir)]
    env = dict(
        os.environ,
        TERM="xterm-256color",
        KVTUI_STATE_DIR=str(home / "state"),
        KVTUI_PROXY_LISTEN=f"127.0.0.1:{port}",
    )
    term = Terminal(argv, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(url)
    except TimeoutError:
        term.stop()
        raise RuntimeError(f"the dashboard's proxy did not start: {term.tail[-1500:]!r}") from None
    return ProxyProcess(name, term.pid, url, None, term.stop)


def _prompt() -> str:
    prose = Prose(11)
    story = story_string(
        "Seraphina",
        prose.paragraph(600),
        "Seraphina is a gentle forest guardian. " + prose.paragraph(900),
        prose.paragraph(200),
        f"{USER} is a traveler. " + prose.paragraph(150),
    )
    lines = [(USER if i % 2 == 0 else MEMBERS[i % 4], prose.line(160)) for i in range(6)]
    return chat_prompt(story, lines, "Seraphina")


async def run(ctx: Context) -> None:
    heading("2. Proxy overhead (kvtui proxy, and the proxy inside the dashboard)")
    baseline = baseline_command()
    if baseline is not None:
        note(f"baseline side: {' '.join(baseline)} (${BASELINE_ENV})")
    server = start_server(ctx, NAME, n_slots=2, n_ctx=8192, cache_ram_mib=0)
    assert server.save_dir is not None
    st_dir = copy_sample(ctx.dir(NAME) / "st-data")
    proxies: list[ProxyProcess] = []
    try:
        proxies.append(start_bare_relay(ctx, server.url))
        proxies.append(start_proxy(ctx, "proxy", server.url, server.save_dir, st_dir))
        proxies.append(start_proxy(ctx, "proxy without ST dir", server.url, server.save_dir, None))
        proxies.append(
            start_dashboard(ctx, "proxy in the dashboard", server.url, server.save_dir, st_dir)
        )
        if baseline is not None:
            proxies.append(
                start_proxy(ctx, BASELINE, server.url, server.save_dir, st_dir, baseline)
            )
        _latency(ctx, server.url, proxies)
        streamed = [p for p in proxies if p.name != "proxy without ST dir"]
        _throughput(ctx, server.url, streamed, "")
    finally:
        for proxy in proxies:
            proxy.stop()
        server.stop()
    # The same with a core left free for the proxy (as on a GPU box, where generation does not
    # need every CPU core): how much of the throughput loss is the proxy competing for CPU.
    server = start_server(ctx, f"{NAME}-1thread", n_slots=2, n_ctx=8192, cache_ram_mib=0, threads=1)
    assert server.save_dir is not None
    free = [start_bare_relay(ctx, server.url)]
    try:
        free.append(start_proxy(ctx, "proxy", server.url, server.save_dir, st_dir))
        if baseline is not None:
            free.append(start_proxy(ctx, BASELINE, server.url, server.save_dir, st_dir, baseline))
        _throughput(ctx, server.url, free, " (server on 1 thread)")
    finally:
        for proxy in free:
            proxy.stop()
        server.stop()


def _latency(ctx: Context, direct_url: str, proxies: list[ProxyProcess]) -> None:
    prompt = _prompt()
    # Two tokens, not one: kvtui takes a 0/1-token request for a cache warm-up (a quiet
    # generation), which with SillyTavern's traffic runs as a background job in a lent slot.
    # The figure is about a character's turn.
    body = st_body(prompt, group_stop("Seraphina", MEMBERS), stream=False, n_predict=2)
    sides = [("direct", Wire(direct_url))] + [(p.name, Wire(p.url)) for p in proxies]
    n = ctx.reps(300, 100)
    first = sides[0][1].post("/completion", body).json()
    note(
        f"prompt {first['tokens_evaluated']} tokens, n_predict 2, cached; {n} requests per "
        f"side, rotating {' / '.join(name for name, _ in sides)}"
    )
    for _ in range(10):  # warm-up: chat switch, routing, connection pools
        for _, wire in sides:
            wire.post("/completion", body)
    times: dict[str, list[float]] = {name: [] for name, _ in sides}
    uncached = 0
    cpu_before = [p.cpu_seconds() for p in proxies]
    for i in range(n):
        shift = i % len(sides)
        for name, wire in sides[shift:] + sides[:shift]:
            reply = wire.post("/completion", body)
            if reply.status != 200:
                raise RuntimeError(f"{name}: HTTP {reply.status}: {reply.body[:300]!r}")
            times[name].append(reply.seconds)
            if reply.json()["timings"]["prompt_n"] > 1:
                uncached += 1
    cpu_after = [p.cpu_seconds() for p in proxies]
    for _, wire in sides:
        wire.close()
    if uncached:
        note(f"WARNING: {uncached} requests were not fully cached")
    d50, d99 = ms(median(times["direct"])), ms(percentile(times["direct"], 99))
    ctx.add(Figure(NAME, "direct: p50 latency", d50, "ms", headline=True))
    ctx.add(Figure(NAME, "direct: p99 latency", d99, "ms"))
    floor = ms(median(times[BARE])) if BARE in times else None
    for proxy, before, after in zip(proxies, cpu_before, cpu_after, strict=True):
        p50, p99 = ms(median(times[proxy.name])), ms(percentile(times[proxy.name], 99))
        primary = proxy.name in TARGETED
        ctx.add(Figure(NAME, f"{proxy.name}: p50 latency", p50, "ms", headline=True))
        ctx.add(Figure(NAME, f"{proxy.name}: p99 latency", p99, "ms"))
        ctx.add(Figure(NAME, f"{proxy.name}: p50 overhead over direct", p50 - d50, "ms"))
        if floor is not None and proxy.name != BARE:
            routing = p50 - floor
            target, ok = ("<= 1 ms", routing <= 1.0) if primary else (None, None)
            name = f"{proxy.name}: routing overhead (p50 minus the bare relay's)"
            ctx.add(Figure(NAME, name, routing, "ms", target, ok, headline=True))
        cpu = ms(after - before) / n
        ctx.add(Figure(NAME, f"{proxy.name}: process CPU per request", cpu, "ms"))


def _throughput(ctx: Context, direct_url: str, proxies: list[ProxyProcess], label: str) -> None:
    prose = Prose(12)
    prompt = chat_prompt(
        story_string(
            "Kael",
            prose.paragraph(300),
            "Kael is a ranger. " + prose.paragraph(300),
            prose.paragraph(100),
            prose.paragraph(80),
        ),
        [(USER, prose.line(120))],
        "Kael",
    )
    body = st_body(prompt, group_stop("Kael", MEMBERS), stream=True, n_predict=2000)
    body["ignore_eos"] = True
    reps = ctx.reps(5, 2)
    note(f"streamed generation of 2000 tokens (ignore_eos){label}, {reps} rotating repetitions")
    sides = [("direct", Wire(direct_url))] + [(p.name, Wire(p.url)) for p in proxies]
    for _, wire in sides:  # warm-up, and the prompt is cached for every side
        wire.post("/completion", dict(body, n_predict=16))
    # CPU is counted around each side's own streams only, so a proxy's idle background work
    # (its 1 s poll, watchers) while the other sides stream is not charged to its tokens.
    by_name = {p.name: p for p in proxies}
    cpu = {p.name: 0.0 for p in proxies}
    rate: dict[str, list[float]] = {name: [] for name, _ in sides}
    server_rate: dict[str, list[float]] = {name: [] for name, _ in sides}
    tokens_seen: dict[str, int] = {name: 0 for name, _ in sides}
    for rep in range(reps):
        shift = rep % len(sides)
        for name, wire in sides[shift:] + sides[:shift]:
            process = by_name.get(name)
            before = process.cpu_seconds() if process else 0.0
            reply = wire.post("/completion", body)
            if process is not None:
                cpu[name] += process.cpu_seconds() - before
            final = last_sse_event(reply.body)
            tokens = int(final["timings"]["predicted_n"])
            tokens_seen[name] += tokens
            rate[name].append(tokens / reply.seconds)
            server_rate[name].append(float(final["timings"]["predicted_per_second"]))
    for _, wire in sides:
        wire.close()
    direct = median(rate["direct"])
    ctx.add(Figure(NAME, f"direct: streamed tokens/s{label}", direct, "tok/s", headline=True))
    floor = median(rate[BARE]) / direct * 100 if BARE in rate else None
    core_free = bool(label)  # the 1-thread run leaves a core for the proxy
    for proxy in proxies:
        proxied = median(rate[proxy.name])
        name = f"{proxy.name}: streamed tokens/s{label}"
        ctx.add(Figure(NAME, name, proxied, "tok/s", headline=True))
        ratio = proxied / direct * 100
        target: str | None = None
        ok: bool | None = None
        if proxy.name in TARGETED and core_free:
            target, ok = ">= 97% of direct", ratio >= 97
        elif proxy.name in TARGETED and floor is not None:
            target, ok = f">= {floor - 5:.1f}% (bare relay - 5 points)", ratio >= floor - 5
        name = f"{proxy.name} / direct streamed throughput{label}"
        ctx.add(Figure(NAME, name, ratio, "%", target, ok, headline=True))
        per_token = ms(cpu[proxy.name]) / tokens_seen[proxy.name] * 1000
        target, ok = ("<= 60 us", per_token <= 60) if proxy.name in TARGETED else (None, None)
        name = f"{proxy.name}: process CPU per streamed token{label}"
        ctx.add(Figure(NAME, name, per_token, "us", target, ok, headline=True))
    rates = ", ".join(f"{name} {median(values):.0f}" for name, values in server_rate.items())
    note(f"server-side predicted_per_second (tok/s): {rates}")
