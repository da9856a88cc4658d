"""The Textual app: wires settings, the service and the dashboard together.

``make_app`` is the one factory the CLI, the demo and the tests use. The App owns the
``KvService`` and closes it when it unmounts; screens receive it and never create their own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from textual.app import App, SystemCommand
from textual.screen import Screen
from textual.worker import Worker

from kvtui.events import Kind
from kvtui.proxy.run import ProxyServer, ProxyStartError
from kvtui.service import KvService
from kvtui.settings import Settings
from kvtui.statelock import StateLock
from kvtui.tui.screens.dashboard import DashboardScreen


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
        self._watch_task: asyncio.Task[None] | None = None
        self._saves_task: asyncio.Task[None] | None = None
        self._sideprompts: Worker[None] | None = None

    def get_default_screen(self) -> Screen[None]:
        if self.demo_slots is not None:
            from kvtui.tui.screens.demo import DemoScreen

            return DemoScreen(self.service, config_path=self.config_path, n_slots=self.demo_slots)
        return DashboardScreen(self.service, config_path=self.config_path)

    async def on_mount(self) -> None:
        self.set_keymap(self.settings.keymap)
        self._saves_task = asyncio.create_task(
            self.service.watch_saves(self._automatic_stop), name="kvtui-save-watcher"
        )
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
            self._watch_task = asyncio.create_task(self._watch(), name="kvtui-chat-watcher")
        self._start_sideprompts()

    def _start_sideprompts(self) -> None:
        """The side prompts' interval trigger on the live chat, as a worker of this app."""
        from kvtui.sideprompts.follow import LiveSidePrompts, follows_live_chat

        if not follows_live_chat(self.service):
            return
        live = LiveSidePrompts(self.service)

        async def follow() -> None:
            try:
                await live.run(self._automatic_stop)
            except Exception as err:  # reported, never a crash of the dashboard
                self.service.events.error(Kind.ERROR, f"The side-prompt follower stopped: {err!r}")

        self._sideprompts = self.run_worker(follow(), name="kvtui-sideprompts", exit_on_error=False)

    async def _watch(self) -> None:
        try:
            await self.service.follow_chats(self._automatic_stop)
        except Exception as err:  # reported, never a crash of the dashboard
            self.service.events.error(Kind.ERROR, f"The chat-switch watcher stopped: {err!r}")

    async def stop_automatic(self) -> None:
        self._automatic_stop.set()
        for task in (self._watch_task, self._saves_task):
            if task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(task, timeout=3)
        self._watch_task = self._saves_task = None
        if self._sideprompts is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._sideprompts.wait(), timeout=3)
            self._sideprompts = None
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
