"""The Textual app: wires settings, the service and the dashboard together.

``make_app`` is the one factory the CLI, the demo and the tests use. The App owns the
``KvService`` and closes it when it unmounts; screens receive it and never create their own.

Its background loops (the save-directory watcher, the chat-switch watcher, the side prompts'
interval trigger) are Textual workers in the ``watchers`` group: Textual cancels them when the
app exits, and a failure is reported like any worker's (the event log; a bug also opens the
traceback modal). The group is not ``exclusive``: the watchers run side by side, and starting
one must not cancel another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from pathlib import Path

from textual.app import App, SystemCommand
from textual.screen import Screen
from textual.worker import Worker, WorkerError, WorkerState

from kvtui.events import Kind
from kvtui.proxy.run import ProxyServer, ProxyStartError
from kvtui.service import KvService
from kvtui.settings import Settings
from kvtui.statelock import StateLock
from kvtui.tui.errors import EXPECTED_ERRORS, report_worker_error
from kvtui.tui.screens.dashboard import DashboardScreen

WATCHERS = "watchers"
"""The worker group of the app's background loops."""


class KvtuiApp(App[int]):
    """kvtui's dashboard application."""

    CSS_PATH = "kvtui.tcss"
    TITLE = "kvtui"

    def __init__(
        self,
        settings: Settings,
        service: KvService,
        *,
        config_path: Path | None = None,
        on_exit: Callable[[], None] | None = None,
        automatic: bool = False,
        demo_slots: int | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.service = service
        self.config_path = config_path
        self._on_exit = on_exit
        self.automatic = automatic
        self.demo_slots = demo_slots
        """Set in ``kvtui demo``: the demo server's slot count (adds the demo's keys)."""
        self.proxy: ProxyServer | None = None
        self._automatic_stop = asyncio.Event()

    def get_default_screen(self) -> Screen[None]:
        if self.demo_slots is not None:
            from kvtui.tui.screens.demo import DemoScreen

            return DemoScreen(self.service, config_path=self.config_path, n_slots=self.demo_slots)
        return DashboardScreen(self.service, config_path=self.config_path)

    async def on_mount(self) -> None:
        self.set_keymap(self.settings.keymap)
        self._watch(self.service.watch_saves, "kvtui-save-watcher", "The save-directory watcher")
        if self.automatic:
            await self.start_automatic()

    async def start_automatic(self) -> None:
        """Run automatic mode in this loop: the routing proxy and the chat-switch watcher.

        A proxy that cannot start (its port is taken) is reported in the event log; the
        dashboard goes on without it.
        """
        proxy = ProxyServer(self.service)
        try:
            await proxy.start()
        except (ProxyStartError, OSError) as err:
            self.service.events.error(Kind.ERROR, f"The proxy did not start: {err}")
            return
        self.proxy = proxy
        self.service.events.info(
            Kind.ROUTE,
            f"Proxy listening on {proxy.url}: set SillyTavern's llama.cpp API URL to it.",
        )
        if self.service.follows_chats:
            self._watch(self.service.follow_chats, "kvtui-chat-watcher", "The chat-switch watcher")
        self._start_sideprompts()

    def _start_sideprompts(self) -> None:
        """The side prompts' interval trigger on the live chat, as a watcher of this app."""
        from kvtui.sideprompts.follow import LiveSidePrompts, follows_live_chat

        if follows_live_chat(self.service):
            live = LiveSidePrompts(self.service)
            self._watch(live.run, "kvtui-sideprompts", "The side-prompt follower")

    def _watch(
        self, loop: Callable[[asyncio.Event], Awaitable[None]], name: str, description: str
    ) -> Worker[None]:
        """Run ``loop`` until the stop event as a worker of the ``watchers`` group."""
        return self.run_worker(
            loop(self._automatic_stop),
            name=name,
            group=WATCHERS,
            description=description,
            exit_on_error=False,  # reported, never a crash of the dashboard
        )

    @property
    def watchers(self) -> list[Worker[object]]:
        """The app's background loops still running (Textual forgets finished workers)."""
        return [w for w in self.workers if w.node is self and w.group == WATCHERS]

    async def wait_for_jobs(self) -> None:
        """Wait until every worker but the watchers (which run until exit) has finished."""
        jobs = [w for w in self.workers if w.group != WATCHERS]
        if jobs:  # (an empty list would mean every worker, the watchers too)
            await self.workers.wait_for_complete(jobs)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        """A watcher that failed: into the event log; a bug also shows its traceback."""
        worker = event.worker
        if event.state is not WorkerState.ERROR or worker.node is not self:
            return
        if worker.group != WATCHERS:  # (finished workers have left self.workers already)
            return
        error = worker.error
        if isinstance(error, EXPECTED_ERRORS):
            self.service.events.error(Kind.ERROR, f"{worker.description} stopped: {error}")
        else:
            self.service.events.error(Kind.ERROR, f"{worker.description} stopped: {error!r}")
            report_worker_error(self.app, worker)

    async def stop_automatic(self) -> None:
        """Stop the watchers (given 3 s to finish, then cancelled) and the proxy."""
        self._automatic_stop.set()
        for worker in self.watchers:
            with contextlib.suppress(WorkerError, TimeoutError):
                await asyncio.wait_for(worker.wait(), timeout=3)
        self.workers.cancel_group(self, WATCHERS)
        if self.proxy is not None:
            await self.proxy.stop()
            self.proxy = None

    async def on_unmount(self) -> None:
        try:
            await self.stop_automatic()
            await self.service.aclose()
        finally:
            if self._on_exit is not None:
                self._on_exit()

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        if isinstance(screen, DashboardScreen):
            for binding in screen.palette_bindings():
                yield SystemCommand(
                    binding.description,
                    binding.tooltip,
                    partial(screen.run_action, binding.action),
                )


def make_app(
    settings: Settings,
    *,
    service: KvService | None = None,
    on_exit: Callable[[], None] | None = None,
    config_path: Path | None = None,
    automatic: bool = False,
    demo_slots: int | None = None,
) -> KvtuiApp:
    """Build the dashboard app (nothing is started and no I/O happens until it runs).

    Args:
        settings: The settings to run with.
        service: The service to use; by default one is built from ``settings``. The app closes
            it on unmount either way.
        on_exit: Called once the app has unmounted (the demo stops its server here).
        config_path: Where the settings form writes the TOML file (default: the user's
            config path, or ``$KVTUI_CONFIG``).
        automatic: Run the routing proxy and the SillyTavern chat-switch watcher in the
            app's loop (``kvtui`` does when ``proxy_enabled`` is set).
        demo_slots: Run as ``kvtui demo`` with this many server slots: the dashboard gets the
            keys that play the demo's scripted conversation.
    """
    return KvtuiApp(
        settings,
        service or KvService(settings),
        config_path=config_path,
        on_exit=on_exit,
        automatic=automatic,
        demo_slots=demo_slots,
    )


def run_dashboard(
    settings: Settings,
    *,
    config_path: Path | None = None,
    demo_slots: int | None = None,
    warnings: Iterable[str] = (),
    notes: Iterable[str] = (),
) -> int:
    """Run the dashboard in the terminal until the user quits; returns the exit code.

    ``warnings`` (e.g. unknown keys in the config file) and ``notes`` open the event log.
    """
    app = make_app(
        settings,
        config_path=config_path,
        automatic=settings.proxy_enabled or demo_slots is not None,
        demo_slots=demo_slots,
    )
    for warning in warnings:
        app.service.events.warning(Kind.ERROR, warning)
    for note in notes:
        app.service.events.info(Kind.CONNECTION, note)
    lock = StateLock(settings.state_dir)
    if not lock.acquire("demo" if demo_slots is not None else "dashboard"):
        app.service.events.warning(
            Kind.ERROR,
            f"{lock.holder()} is running with the same state directory: both keep the slot "
            "book, and the last to write wins. Stop one of them.",
        )
    else:
        app.service.repair_saves()
    try:
        result = app.run()
    finally:
        lock.release()
    return result if result is not None else (app.return_code or 0)
