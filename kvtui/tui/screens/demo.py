"""The demo's dashboard: the real dashboard plus two keys that play the scripted conversation.

``n`` plays the next turn of :data:`kvtui.demo_script.SCRIPT` through the running proxy; ``g``
plays the rest one turn after another (``g`` again pauses after the current turn). A line above
the event log says which turn is playing and what to watch for in the table.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Static

from kvtui.demo_script import PARTY, SPEAKERS_IN_GROUP, DemoPlayer, DemoScriptError, Step, Turn
from kvtui.events import Event, Kind
from kvtui.service import KvService
from kvtui.tui.screens.dashboard import ACTIONS, HELP, QUIT, DashboardScreen, _binding
from kvtui.tui.widgets.event_log import EventLogPanel

PLAY_PAUSE = 2.0
"""Seconds between turns while playing continuously, so each change can be seen."""


def step_text(step: Step, index: int, total: int, chat_title: str) -> Text:
    """``Turn 4/12 · Forest Party · Mira (swipe)`` and what to watch for."""
    who = step.speaker + (" (swipe)" if step.turn is Turn.SWIPE else "")
    text = Text.assemble((f"Turn {index + 1}/{total} ", "bold"), f"· {chat_title} · {who}")
    if step.watch:
        text.append(f" — {step.watch}", style="italic")
    return text


def intro_text(n_slots: int | None) -> Text:
    """What the demo keys do, and whether an eviction can happen with this many slots."""
    text = Text.assemble(
        ("Demo: ", "bold"),
        "press ",
        ("n", "bold reverse"),
        " to play the next turn of a SillyTavern conversation, ",
        ("g", "bold reverse"),
        " to play them all.",
    )
    if n_slots is not None and n_slots >= SPEAKERS_IN_GROUP:
        text.append(
            f" With {n_slots} slots nobody is evicted: try kvtui demo --slots 3.", style="italic"
        )
    return text


def chat_title(step: Step) -> str:
    return "Forest Party" if step.chat == PARTY else "Seraphina (1:1 chat)"


class DemoScreen(DashboardScreen, inherit_bindings=False):
    """The dashboard with the demo's conversation keys."""

    # The demo's keys come right after help in the footer (inherited bindings would put them
    # last): the class does not inherit bindings (see the class line) and repeats Screen's.
    BINDINGS = [
        *Screen.BINDINGS,
        HELP,
        _binding("n", "demo_next", "Next", "Play the demo conversation's next turn."),
        _binding("g", "demo_play", "Play", "Play the demo's turns one after another (g pauses)."),
        *(replace(b, show=False) if b.action == "save_tagged" else b for b in ACTIONS),
        QUIT,
    ]

    def __init__(
        self, service: KvService, *, config_path: Path | None = None, n_slots: int | None = None
    ) -> None:
        super().__init__(service, config_path=config_path)
        self.n_slots = n_slots
        """The demo server's slot count (the intro says whether an eviction can happen)."""
        self.player: DemoPlayer | None = None
        self.playing = False
        """Turns keep coming until the script ends or ``g`` is pressed again."""

    def compose(self) -> ComposeResult:
        for widget in super().compose():
            if widget.id == "events":
                yield Static(intro_text(None), id="demo-line")
            yield widget

    def on_mount(self) -> None:
        # Textual calls LiveScreen.on_mount too (handlers run for each class in the MRO).
        self._say(intro_text(self.n_slots))

    def _player(self) -> DemoPlayer | None:
        if self.player is not None:
            return self.player
        proxy = getattr(self.app, "proxy", None)
        st_dir = self.settings.st_dir
        if proxy is None or st_dir is None:
            self.notify(
                "The demo's proxy is not running (see the event log), so turns cannot be played.",
                severity="error",
            )
            return None
        self.player = DemoPlayer(st_dir, proxy.url)
        return self.player

    def action_demo_next(self) -> None:
        if self.playing:
            self.notify("Already playing; g pauses.", severity="warning")
            return
        player = self._player()
        if player is not None:
            self._play(player, continuous=False)

    def action_demo_play(self) -> None:
        if self.playing:
            self.playing = False
            self._say(Text("Pausing after this turn…", style="italic"))
            return
        player = self._player()
        if player is not None:
            self.playing = True
            self._play(player, continuous=True)

    @work(exclusive=True, group="demo", exit_on_error=False, description="Playing the demo")
    async def _play(self, player: DemoPlayer, *, continuous: bool) -> None:
        try:
            while True:
                step = player.next_step
                if step is None:
                    self._say(
                        Text(
                            "The conversation is over. Try l (load a save), a (save now) or "
                            "p (prewarm); q quits and removes the demo's files.",
                            style="bold",
                        )
                    )
                    return
                self._say(step_text(step, player.position, len(player.script), chat_title(step)))
                with self.busy(f"{step.speaker} is answering…"):
                    result = await player.play_next()
                said = f'Alex: "{step.user_text}" → ' if step.user_text else ""
                self.query_one(EventLogPanel).add_event(
                    Event(
                        Kind.ROUTE,
                        f"Demo turn {result.index + 1}: {said}{step.speaker} "
                        f"{'swipes' if step.turn is Turn.SWIPE else 'replies'} "
                        f"in {result.chat_title}.",
                    )
                )
                self.poll()
                if not (continuous and self.playing):
                    return
                await asyncio.sleep(PLAY_PAUSE)  # pacing for the viewer, not synchronisation
        except DemoScriptError as err:
            self.notify(str(err), title="Demo", severity="error", markup=False)
        finally:
            self.playing = False

    def _say(self, text: Text) -> None:
        self.query_one("#demo-line", Static).update(text)
