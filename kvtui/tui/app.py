"""The Textual app: wires settings, the service and the dashboard together.

``make_app`` is the one factory the CLI, the demo and the tests use. The App owns the
``KvService`` and closes it when it unmounts; screens receive it and never create their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from textual.app import App, SystemCommand
from textual.screen import Screen

from kvtui.service import KvService
from kvtui.settings import Settings
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
    ) -> None:
        super().__init__()
        self.settings = settings
        self.service = service
        self.config_path = config_path
        self._on_exit = on_exit

    def get_default_screen(self) -> Screen[None]:
        return DashboardScreen(self.service, config_path=self.config_path)

    def on_mount(self) -> None:
        self.set_keymap(self.settings.keymap)

    async def on_unmount(self) -> None:
        try:
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
) -> KvtuiApp:
    """Build the dashboard app (nothing is started and no I/O happens until it runs).

    Args:
        settings: The settings to run with.
        service: The service to use; by default one is built from ``settings``. The app closes
            it on unmount either way.
        on_exit: Called once the app has unmounted (the demo stops its server here).
        config_path: Where the settings form writes the TOML file (default: the user's
            config path, or ``$KVTUI_CONFIG``).
    """
    return KvtuiApp(
        settings,
        service or KvService(settings),
        config_path=config_path,
        on_exit=on_exit,
    )


def run_dashboard(settings: Settings, *, config_path: Path | None = None) -> int:
    """Run the dashboard in the terminal until the user quits; returns the exit code."""
    app = make_app(settings, config_path=config_path)
    result = app.run()
    return result if result is not None else (app.return_code or 0)
