"""SVG snapshots of each screen, from fixed data (no server, no clock, no temp paths).

The service is the real ``KvService`` with its poll answered by a fixed snapshot, in the manner
of memray's ``MockReader``: what is pinned here is the screen, not the server. The same SVGs are
the README's screenshots: ``python screenshots/update.py`` rewrites the snapshots and copies them
there, and ``test_screenshots_match_the_snapshots`` keeps the two from drifting apart.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input, Static
from textual.worker import WorkerCancelled

from kvtui.events import Event, EventLog, Kind, Level
from kvtui.service import ConnectionState, KvService, SlotRow, Snapshot
from kvtui.settings import Settings
from kvtui.store import SaveEntry, format_save_name, normalize
from kvtui.tui.app import WATCHERS, KvtuiApp, make_app
from kvtui.tui.screens import live
from kvtui.tui.screens.load_picker import LoadPicker
from kvtui.warmth import TurnRecord, WarmthLedger

SnapCompare = Callable[..., bool]

ROOT = Path(__file__).parent.parent
SNAPSHOTS = Path(__file__).parent / "__snapshots__" / "test_tui_snapshots"
SCREENSHOTS = ROOT / "screenshots"
SIZE = (100, 32)
NOW = datetime(2026, 5, 3, 18, 42, 10, tzinfo=UTC)
PARTY = "2026-05-03@19h02m11s004ms"
SOLO = "Seraphina - 2026-05-03@18h45m46s123ms"
TITLES = {PARTY: "Forest Party", SOLO: "Seraphina"}
SHOTS = {
    "test_dashboard": "dashboard.svg",
    "test_demo_at_80x24": "demo-80x24.svg",
    "test_confirm_shows_its_keys": "confirm.svg",
    "test_load_picker": "load-picker.svg",
    "test_tag_dialog": "tag-dialog.svg",
    "test_settings_form": "settings.svg",
    "test_prewarm_screen": "prewarm.svg",
}


def slot(n: int, **changes: Any) -> SlotRow:
    base: dict[str, Any] = dict(
        slot=n,
        n_ctx=2048,
        processing=False,
        n_decoded=None,
        n_remain=None,
        tokens=None,
        chat=None,
        character=None,
        usage=0,
        messages_until_save=None,
        last_save_at=None,
        last_save_file=None,
    )
    base.update(changes)
    return SlotRow(**base)


SNAPSHOT = Snapshot(
    state=ConnectionState.CONNECTED,
    server_url="http://127.0.0.1:8080",
    model="/models/Mistral-Nemo-12B-Q5_K_M.gguf",
    build_info="b7021-6a1f3b2c",
    total_slots=3,
    n_ctx=2048,
    save_dir=Path("/home/alex/kv-saves"),
    rows=(
        slot(0, tokens=661, chat=PARTY, character="Brann", usage=1, messages_until_save=1),
        slot(1, processing=True, n_decoded=9, n_remain=7, tokens=791, chat=PARTY,
             character="Seraphina", usage=2, messages_until_save=2,
             last_save_at=NOW - timedelta(seconds=8)),
        slot(2, tokens=604, chat=PARTY, character="Mira", usage=1, messages_until_save=None,
             last_save_at=NOW - timedelta(seconds=8)),
    ),
    error=None,
    taken_at=NOW,
)  # fmt: skip
"""The demo's table as its script plays (turn 6 of 12), Mira's autosave switched off."""

EVENTS = [
    Event(Kind.CHAT_SWITCH, f"Current chat: Forest Party ({PARTY}).",
          time=NOW - timedelta(seconds=40)),
    Event(Kind.ROUTE, f"Seraphina ({PARTY}) → slot 0.", time=NOW - timedelta(seconds=38)),
    Event(Kind.ROUTE, f"Kael ({PARTY}) → slot 1.", time=NOW - timedelta(seconds=36)),
    Event(Kind.ROUTE, f"Mira ({PARTY}) → slot 2.", time=NOW - timedelta(seconds=34)),
    Event(Kind.AUTOSAVE, f"Saved Seraphina ({PARTY}) from slot 0: 628 tokens, autosave.",
          time=NOW - timedelta(seconds=20)),
    Event(Kind.EVICT, "Evicted Seraphina from slot 0 (usage 1).",
          time=NOW - timedelta(seconds=20)),
    Event(Kind.ROUTE, f"Brann ({PARTY}) → slot 0.", time=NOW - timedelta(seconds=20)),
    Event(Kind.AUTOSAVE, f"Saved Kael ({PARTY}) from slot 1: 573 tokens, autosave.",
          time=NOW - timedelta(seconds=8)),
    Event(Kind.EVICT, "Evicted Kael from slot 1 (usage 1).", time=NOW - timedelta(seconds=8)),
    Event(Kind.AUTOLOAD, "Restored Seraphina into slot 1: 628 tokens, saved 18:41:50.",
          time=NOW - timedelta(seconds=8)),
    Event(Kind.CONNECTION, "llama-server is slow to answer /slots (2.1 s).", Level.WARNING,
          time=NOW - timedelta(seconds=2)),
]  # fmt: skip


def turn(
    character: str, slot: int, seconds: int, prompt_n: int, cache_n: int, **kw: Any
) -> TurnRecord:
    """One routed turn of the party as the ledger books it (a 12B model on CPU: 50 tok/s)."""
    base: dict[str, Any] = dict(
        ts=(NOW - timedelta(seconds=seconds)).isoformat(),
        chat=PARTY,
        chat_title="Forest Party",
        character=character,
        source="evidence",
        gen_type="normal",
        slot=slot,
        restored=None,
        prompt_n=prompt_n,
        cache_n=cache_n,
        new_tokens=prompt_n,
        lost_tokens=0,
        reason=None,
        first_diff=None,
        disk_read_bytes=0,
        disk_write_bytes=0,
        prompt_ms=prompt_n * 20.0,
    )
    base.update(kw)
    return TurnRecord(**base)


TURNS = [
    turn("Seraphina", 0, 38, 598, 0),
    turn("Kael", 1, 36, 561, 0),
    turn("Mira", 2, 34, 590, 0),
    turn("Brann", 0, 20, 636, 5, new_tokens=56, lost_tokens=580, reason="no_save",
         losses={"no_save": 580}),
    turn("Seraphina", 1, 8, 150, 628, new_tokens=44, lost_tokens=106, reason="older_save",
         losses={"older_save": 106}, restored="seraphina-autosave.bin", restored_tokens=628,
         behind_messages=3),
    turn("Mira", 2, 6, 14, 590),
    turn("Brann", 0, 4, 20, 641),
]  # fmt: skip
"""The party's turns behind the table: Brann's first turn found no save, Seraphina came back
from an autosave three messages old."""


def fixed_ledger() -> WarmthLedger:
    ledger = WarmthLedger(None)
    ledger.load(TURNS, session=True)
    return ledger


def entry(chat: str, character: str, minutes: int, tag: str | None = None) -> SaveEntry:
    when = NOW - timedelta(minutes=minutes)
    return SaveEntry(
        filename=format_save_name(chat, character, when, tag),
        chat=chat,
        character=character,
        tag=tag,
        timestamp=when,
        size=(1200 + minutes) * 1024,
        n_saved=1800 - minutes,
        meta=None,
        chat_key=normalize(chat),
        character_key=normalize(character),
    )


ENTRIES = [
    entry(PARTY, "Seraphina", 3, tag="важный момент"),
    entry(PARTY, "Seraphina", 30),
    entry(PARTY, "Seraphina", 95),
    entry(PARTY, "Kael", 12),
    entry(PARTY, "Kael", 70, tag="end of chapter 1"),
    entry(PARTY, "Mira", 40),
    entry(SOLO, "Seraphina", 60 * 22),
    entry("Tavern brawl", "Brann", 60 * 24 * 9),
]


class FixedEvents(EventLog):
    """An event log that starts with fixed, timestamped events."""

    def __init__(self, events: Sequence[Event]) -> None:
        super().__init__()
        self._fixed = list(events)

    def recent(self, n: int | None = None) -> list[Event]:
        return self._fixed if n is None else self._fixed[-n:]


class FixedService(KvService):
    """The real service whose every poll answers with the same snapshot."""

    async def refresh(self, *, max_age: float = 0.0) -> Snapshot:
        return SNAPSHOT

    def snapshot(self, slots: Sequence[object] = (), error: str | None = None) -> Snapshot:
        return SNAPSHOT

    def persist(self) -> None:
        pass  # nothing on disk to keep


def fixed_app(st_dir: Path | None = None, *, demo: bool = False) -> KvtuiApp:
    settings = Settings.model_construct(
        server_url="http://127.0.0.1:8080",
        save_dir=Path("/home/alex/kv-saves"),
        st_dir=st_dir or Path("/home/alex/SillyTavern/data/default-user"),
        state_dir=Path("/home/alex/.local/state/kvtui"),
        poll_interval=60.0,
        notifications=False,
    )
    service = FixedService(settings, events=FixedEvents(EVENTS))
    return make_app(settings, service=service, demo_slots=3 if demo else None)


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local times on screen are the same on every machine; chat names are SillyTavern's."""
    monkeypatch.setattr(live, "chat_titles", lambda st_dir: dict(TITLES))
    ledger = fixed_ledger()
    monkeypatch.setattr(live.LiveScreen, "ledger", lambda self: ledger)
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


async def settle(pilot: Pilot[Any]) -> None:
    """Let polls finish and the screen render; a job waiting on a dialog is left waiting (and
    the app's watchers run until exit)."""
    for worker in [w for w in pilot.app.workers if w.group not in ("job", WATCHERS)]:
        with contextlib.suppress(WorkerCancelled):
            await worker.wait()
    await pilot.pause()
    for field in pilot.app.screen.query(Input):
        field.cursor_blink = False


def show_demo_turn(pilot: Pilot[Any]) -> None:
    from kvtui.demo_script import SCRIPT
    from kvtui.tui.screens.demo import step_text

    screen = pilot.app.screen
    screen.query_one("#demo-line", Static).update(
        step_text(SCRIPT[5], 5, len(SCRIPT), "Forest Party")
    )


def test_dashboard(snap_compare: SnapCompare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        show_demo_turn(pilot)
        await pilot.press("down")
        await settle(pilot)

    assert snap_compare(fixed_app(demo=True), run_before=run_before, terminal_size=SIZE)


def test_demo_at_80x24(snap_compare: SnapCompare) -> None:
    """The smallest terminal: every main key in the footer, the rest behind ? and ctrl+p."""

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        show_demo_turn(pilot)
        await settle(pilot)

    assert snap_compare(fixed_app(demo=True), run_before=run_before, terminal_size=(80, 24))


def test_confirm_shows_its_keys(snap_compare: SnapCompare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("down", "e")
        await settle(pilot)

    assert snap_compare(fixed_app(), run_before=run_before, terminal_size=(80, 24))


def test_load_picker(snap_compare: SnapCompare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        pilot.app.push_screen(LoadPicker(ENTRIES, current_chat=PARTY, titles=TITLES))
        await settle(pilot)
        # Seraphina: open her saves and take the tagged one; Kael: his newest.
        await pilot.press("down", "enter", "down", "space", "down", "down", "down", "space")
        await settle(pilot)

    assert snap_compare(fixed_app(), run_before=run_before, terminal_size=SIZE)


def test_tag_dialog(snap_compare: SnapCompare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("t")
        await settle(pilot)
        await pilot.press(*"важный момент")
        await settle(pilot)

    assert snap_compare(fixed_app(), run_before=run_before, terminal_size=SIZE)


def test_settings_form(snap_compare: SnapCompare) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("f2")
        await settle(pilot)
        field = pilot.app.screen.query_one("#field-autosave_every", Input)
        field.value = "0"  # an invalid value shows its error inline
        field.focus()
        await settle(pilot)

    assert snap_compare(fixed_app(), run_before=run_before, terminal_size=SIZE)


def test_prewarm_screen(snap_compare: SnapCompare, tmp_path: Path) -> None:
    from kvtui.sillytavern.sample import copy_sample
    from kvtui.tui.screens.prewarm import PrewarmScreen

    st_dir = copy_sample(tmp_path / "st")
    app = fixed_app(st_dir)

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        screen = PrewarmScreen(app.service, PARTY)
        await pilot.app.push_screen(screen)
        for _ in range(200):
            if screen.plan is not None:
                break
            await pilot.pause(0.02)
        await settle(pilot)

    assert snap_compare(app, run_before=run_before, terminal_size=SIZE)


def test_screenshots_match_the_snapshots() -> None:
    for test, shot in SHOTS.items():
        snapshot = SNAPSHOTS / f"{test}.svg"
        assert snapshot.exists(), "run: python screenshots/update.py"
        assert (SCREENSHOTS / shot).read_bytes() == snapshot.read_bytes(), (
            f"screenshots/{shot} is stale: run python screenshots/update.py"
        )
