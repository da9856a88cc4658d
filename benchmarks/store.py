"""Benchmark 3: the save store at 1,000 / 10,000 / 50,000 files, and the load picker in the app.

Dummy save files (a few bytes each) with valid seed names: chats named as SillyTavern names them
(1:1 ``Name - date@time`` and group chat timestamps), several characters per chat, about one in
ten saves tagged (some tags in Cyrillic), one in five with a sidecar, plus a few legacy and
unparsable names. The same directory grows from 1k to 10k to 50k files.

Timed, each repeated and reported as a median: a cold index (a new ``SaveStore``: scan, sidecars,
sort), a rescan when nothing changed, grouping for the picker, filtering per keystroke, ``latest``
and rotation right after a new save (as ``KvService.save_slot`` runs them). At 10,000 saves the
real dashboard (``make_app``, headless ``run_test``, against a real llama-server) opens the load
picker with its key, ``l``: the time from the key press to the picker's tree filled, on the first
opening (cold index) and on re-openings; then the time from a keystroke in its search box to the
tree showing the filtered result.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.common import Context, Figure, heading, median, ms, note, start_server
from kvtui.settings import Settings
from kvtui.sillytavern import copy_sample
from kvtui.store import SaveMeta, SaveStore, filter_groups, format_save_name, group_saves

NAME = "store"
SIZES = (1_000, 10_000, 50_000)
PICKER_SIZE = 10_000
QUERIES = ("kael", "forest", "важ", "seraphina 2026")
_NAMES = (
    "Seraphina Kael Mira Brann Aria Lyra Tobias Elowen Garrick Nyx Orion Petra Quinn Rowan "
    "Sable Thorne Ulric Vesper Wren Yara Zephyr Astrid Bram Cora Darian Eira Fenn Gwen Hale Isla "
    "Jory Kestrel Lark Maelis Nessa Oberon Pim Rhea Soren Talia"
).split()
_TAGS = ("end of chapter 1", "важный момент", "before the duel", "good ending", "checkpoint")
T0 = datetime(2025, 1, 1, tzinfo=UTC)


class SaveFactory:
    """Writes dummy saves into one directory, continuing where it left off."""

    def __init__(self, directory: Path, seed: int = 5) -> None:
        self.directory = directory
        self.rng = random.Random(seed)
        self.count = 0
        self.chats: list[tuple[str, list[str]]] = []
        self.when = T0

    def _new_chat(self) -> tuple[str, list[str]]:
        rng = self.rng
        stamp = (T0 + timedelta(minutes=rng.randint(0, 600_000))).strftime("%Y-%m-%d@%Hh%Mm%Ss")
        stamp += f"{rng.randint(0, 999):03d}ms"
        if rng.random() < 0.6:
            character = rng.choice(_NAMES)
            return f"{character} - {stamp}", [character]
        return stamp, rng.sample(_NAMES, rng.randint(2, 6))

    def grow(self, total: int) -> None:
        rng = self.rng
        while self.count < total:
            if not self.chats or rng.random() < 1 / 40:
                self.chats.append(self._new_chat())
            chat, characters = self.chats[-1] if rng.random() < 0.7 else rng.choice(self.chats)
            character = rng.choice(characters)
            self.when += timedelta(seconds=rng.randint(1, 900))
            roll = rng.random()
            if roll < 0.002:
                name = f"persist{self.count}.bin"  # saved by hand: unparsable, still listed
            elif roll < 0.01:
                name = f"{chat}_{self.when:%Y%m%d%H%M%S}_slot{rng.randint(0, 3)}.bin"  # legacy
            else:
                tag = rng.choice(_TAGS) if rng.random() < 0.1 else None
                name = format_save_name(chat, character, self.when, tag)
                if rng.random() < 0.2:
                    meta = SaveMeta(
                        chat=chat, character=character, tag=tag, n_saved=rng.randint(500, 16000),
                        n_written=rng.randint(10**5, 10**7), model="model.gguf", n_ctx=16384,
                        slot=rng.randint(0, 3), saved_at=self.when,
                    )  # fmt: skip
                    (self.directory / f"{name}.json").write_text(meta.model_dump_json())
            path = self.directory / name
            if path.exists():
                continue
            path.write_bytes(b"KVTUI-BENCH")
            self.count += 1


def _index(store: SaveStore) -> list[Any]:
    store.rescan()
    return store.entries()


def _polled(dashboard: Any) -> bool:
    return dashboard.snapshot is not None


def _on_dashboard(app: Any) -> bool:
    return bool(app.screen is app.screen_stack[0])


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


async def run(ctx: Context) -> None:
    heading("3. Save store at scale")
    directory = ctx.dir(NAME) / "saves"
    directory.mkdir(exist_ok=True)
    factory = SaveFactory(directory)
    reps = ctx.reps(5, 3)
    for size in SIZES:
        started = time.perf_counter()
        factory.grow(size)
        note(f"{size:,} save files ({time.perf_counter() - started:.1f} s to write them)")
        _store_figures(ctx, directory, size, reps, factory)
        if size == PICKER_SIZE:
            await _picker(ctx, directory, size)
            small = ctx.dir(NAME) / "ten-saves"
            small.mkdir(exist_ok=True)
            SaveFactory(small, seed=6).grow(10)
            await _picker(ctx, small, 10)


def _store_figures(ctx: Context, directory: Path, size: int, reps: int, f: SaveFactory) -> None:
    label = f"{size // 1000}k"
    cold, warm, grouping, keys = [], [], [], []
    store = SaveStore(directory)
    entries: list[Any] = []
    for _ in range(reps):
        store = SaveStore(directory)
        seconds, entries = _timed(partial(_index, store))
        cold.append(seconds)
        warm.append(_timed(store.rescan)[0])
    chat, characters = f.chats[len(f.chats) // 2]
    current = chat
    groups: list[Any] = []
    for _ in range(reps):
        seconds, groups = _timed(lambda: group_saves(entries, current))
        grouping.append(seconds)
    for _ in range(reps):
        for query in QUERIES:
            for end in range(1, len(query) + 1):
                keys.append(_timed(partial(filter_groups, groups, query[:end]))[0])
    cold_ms = ms(median(cold))
    ctx.add(
        Figure(NAME, f"{label}: index, cold (scan, sidecars, sort)", cold_ms, "ms", headline=True)
    )
    ctx.add(Figure(NAME, f"{label}: rescan, nothing changed", ms(median(warm)), "ms"))
    ctx.add(Figure(NAME, f"{label}: group for the picker", ms(median(grouping)), "ms"))
    key_ms = ms(median(keys))
    key_max = ms(max(keys))
    ctx.add(Figure(NAME, f"{label}: filter per keystroke (median)", key_ms, "ms"))
    ctx.add(Figure(NAME, f"{label}: filter per keystroke (slowest)", key_max, "ms", headline=True))
    # A new save of one character, then what save_slot / route run next: latest and rotate.
    latest, rotate = [], []
    character = characters[0]
    for _ in range(reps):
        for _ in range(12):
            f.when += timedelta(seconds=1)
            name = format_save_name(chat, character, f.when)
            (directory / name).write_bytes(b"KVTUI-BENCH")
            f.count += 1
        latest.append(_timed(lambda: store.latest(chat, character))[0])
        f.when += timedelta(seconds=1)
        (directory / format_save_name(chat, character, f.when)).write_bytes(b"KVTUI-BENCH")
        seconds, deleted = _timed(lambda: store.rotate(chat, character, keep=10))
        rotate.append(seconds)
        f.count += 1 - len(deleted)
    ctx.add(Figure(NAME, f"{label}: latest() after a new file", ms(median(latest)), "ms"))
    rotate_ms = ms(median(rotate))
    ctx.add(Figure(NAME, f"{label}: rotate() after a new save", rotate_ms, "ms", headline=True))


_INHERITED = object()


class _Probes:
    """Timestamps from inside the app: the picker's data read, its construction, each tree fill
    (``_show``) and each frame the app renders (``App._display``; headless apps render too)."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}
        self.fills: list[float] = []
        self.frames: list[float] = []
        self._undo: list[tuple[object, str, object]] = []

    def install(self, app_class: type[Any]) -> None:
        import kvtui.tui.screens.dashboard as dashboard_module
        from kvtui.tui.screens.load_picker import LoadPicker

        real_show, real_init = LoadPicker._show, LoadPicker.__init__
        real_data = getattr(dashboard_module, "picker_data")  # noqa: B009 - patched below
        real_display = app_class._display
        probes = self

        def show(self: Any, *args: Any, **kwargs: Any) -> None:
            real_show(self, *args, **kwargs)
            probes.fills.append(time.perf_counter())

        def init(self: Any, *args: Any, **kwargs: Any) -> None:
            real_init(self, *args, **kwargs)
            probes.marks["built"] = time.perf_counter()

        def data(*args: Any, **kwargs: Any) -> Any:
            result = real_data(*args, **kwargs)
            probes.marks["read"] = time.perf_counter()
            return result

        def display(self: Any, screen: Any, renderable: Any) -> None:
            real_display(self, screen, renderable)
            if renderable is not None:
                probes.frames.append(time.perf_counter())

        for owner, attr, probe in (
            (LoadPicker, "_show", show),
            (LoadPicker, "__init__", init),
            (dashboard_module, "picker_data", data),
            (app_class, "_display", display),
        ):
            self._undo.append((owner, attr, vars(owner).get(attr, _INHERITED)))
            setattr(owner, attr, probe)

    def remove(self) -> None:
        for owner, attr, real in reversed(self._undo):
            if real is _INHERITED:
                delattr(owner, attr)
            else:
                setattr(owner, attr, real)
        self._undo.clear()

    def fill_after(self, moment: float) -> float | None:
        return next((t for t in self.fills if t > moment), None)

    def frame_after(self, moment: float) -> float | None:
        return next((t for t in self.frames if t > moment), None)


async def _until(predicate: Callable[[], Any], what: str, limit: float = 60.0) -> Any:
    deadline = time.perf_counter() + limit
    while not (value := predicate()):
        if time.perf_counter() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)
    return value


async def _picker(ctx: Context, saves: Path, size: int) -> None:
    """The load picker in the real dashboard, opened with its key. With 10 saves it shows what
    the screen costs by itself (no target).

    Times come from probes inside the app (the Pilot's own waits are not counted): from just
    before the key press to the tree filled, and to the first frame rendered after that.
    """
    from textual.widgets import Input

    from kvtui.tui.app import KvtuiApp, make_app
    from kvtui.tui.screens.dashboard import DashboardScreen
    from kvtui.tui.screens.load_picker import LoadPicker

    server = start_server(ctx, f"{NAME}-picker", n_slots=2, n_ctx=2048)
    st_dir = copy_sample(ctx.dir(NAME) / "st-data")
    settings = Settings(
        server_url=server.url, save_dir=saves, st_dir=st_dir, state_dir=ctx.dir(NAME) / "state"
    )
    apps = ctx.reps(3, 2) if size == PICKER_SIZE else 1
    label = f"{size // 1000}k" if size >= 1000 else f"{size} saves"
    note(f"load picker in the dashboard with {size:,} saves: {apps} app start(s), 3 openings each")
    opens: dict[str, list[float]] = {"first": [], "again": []}
    filled: dict[str, list[float]] = {"first": [], "again": []}
    parts: dict[str, list[float]] = {"read": [], "build": [], "mount": [], "frame": []}
    keys: dict[int, list[float]] = {}
    probes = _Probes()
    probes.install(KvtuiApp)
    try:
        for _ in range(apps):
            app = make_app(settings)
            async with app.run_test(size=(120, 40)) as pilot:
                dashboard = app.screen_stack[0]
                assert isinstance(dashboard, DashboardScreen)
                await _until(partial(_polled, dashboard), "the first poll")
                await pilot.pause()
                for opening in range(3):
                    probes.marks.clear()
                    started = time.perf_counter()
                    await pilot.press("l")
                    fill = await _until(partial(probes.fill_after, started), "the picker")
                    frame = await _until(partial(probes.frame_after, fill), "a frame")
                    kind = "first" if opening == 0 else "again"
                    filled[kind].append(fill - started)
                    opens[kind].append(frame - started)
                    if opening:
                        parts["read"].append(probes.marks["read"] - started)
                        parts["build"].append(probes.marks["built"] - probes.marks["read"])
                        parts["mount"].append(fill - probes.marks["built"])
                        parts["frame"].append(frame - fill)
                    await pilot.pause()
                    picker = app.screen
                    assert isinstance(picker, LoadPicker)
                    if opening == 0:
                        await pilot.press("slash")
                        await pilot.pause()
                        for i, char in enumerate("kael"):
                            started = time.perf_counter()
                            await pilot.press(char)
                            fill = await _until(partial(probes.fill_after, started), "filter")
                            frame = await _until(partial(probes.frame_after, fill), "a frame")
                            keys.setdefault(i, []).append(frame - started)
                            await pilot.pause()
                        assert picker.query_one(Input).value == "kael"
                    await pilot.press("escape")
                    await _until(partial(_on_dashboard, app), "the dashboard")
                    await pilot.pause()
                await app.workers.wait_for_complete()
    finally:
        probes.remove()
        server.stop()
    main = size == PICKER_SIZE
    for kind, what in (("first", "first (cold index)"), ("again", "re-opened")):
        value = ms(median(opens[kind]))
        target, ok = ("<= 200 ms", value <= 200) if main else (None, None)
        name = f"{label}: picker open, key to frame, {what}"
        ctx.add(Figure(NAME, name, value, "ms", target, ok))
    note(
        f"key to tree filled: first {ms(median(filled['first'])):.0f} ms, re-opened "
        f"{ms(median(filled['again'])):.0f} ms; re-opened, parts: picker_data (thread) "
        f"{ms(median(parts['read'])):.0f} ms, LoadPicker() {ms(median(parts['build'])):.0f} ms, "
        f"compose + mount + tree {ms(median(parts['mount'])):.0f} ms, render "
        f"{ms(median(parts['frame'])):.0f} ms"
    )
    per_key = [ms(median(keys[i])) for i in sorted(keys)]
    note("keystroke to frame, per key of 'kael': " + ", ".join(f"{v:.1f}" for v in per_key))
    worst = max(per_key)
    target, ok = ("<= 30 ms", worst <= 30) if main else (None, None)
    ctx.add(
        Figure(
            NAME,
            f"{label}: picker filter, keystroke to frame, slowest key",
            worst,
            "ms",
            target,
            ok,
        )
    )
