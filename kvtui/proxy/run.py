"""Run the routing proxy: inside the dashboard's event loop, or headless as ``kvtui proxy``.

``ProxyServer`` binds the listening socket itself (so a taken port is a clear error, not a
``sys.exit`` from inside uvicorn, and port 0 works for tests) and serves the ASGI app with uvicorn
as a task in the caller's event loop, leaving signal handling to the host. ``run_proxy_forever``
is the ``kvtui proxy`` command: the proxy, the service's chat-switch watcher, a poll of
``/slots`` (so a restarted llama-server is noticed) and the event log printed to stdout, until
Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import socket
import sys
from collections.abc import Coroutine, Generator
from typing import Any

import uvicorn

from kvtui.errors import KvtuiError
from kvtui.events import Event, Kind, Level
from kvtui.proxy.app import ProxyApp, make_proxy_app
from kvtui.proxy.guard import exposure
from kvtui.service import KvService
from kvtui.settings import Settings


class ProxyStartError(KvtuiError):
    """The proxy could not start listening (the message says why and what to do)."""


class HostedServer(uvicorn.Server):
    """uvicorn without its own signal handlers: the dashboard or the CLI owns Ctrl-C."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def server_config(app: Any, host: str, port: int) -> uvicorn.Config:
    """How uvicorn serves the proxy (the benchmark's bare relay is served the same way)."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
        server_header=False,  # llama-server's own Server/Date headers pass through
        date_header=False,
        timeout_graceful_shutdown=3,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``; raises ``ProxyStartError`` when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio only turns Nagle off (TCP_NODELAY) on sockets that say they
    # are TCP, and Nagle with delayed ACKs stalls small replies by 40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ProxyStartError(
                f"Port {port} on {host} is already in use (another kvtui proxy, or llama-server "
                "itself?). Pick another address with --listen HOST:PORT or proxy_listen in the "
                "config file."
            ) from err
        raise ProxyStartError(f"Cannot listen on {host}:{port}: {err.strerror or err}") from err
    sock.setblocking(False)
    return sock


class ProxyServer:
    """The proxy app served by uvicorn in the current event loop."""

    def __init__(
        self, service: KvService, *, host: str | None = None, port: int | None = None
    ) -> None:
        settings = service.settings
        self.service = service
        self.host = host if host is not None else settings.listen_host
        self.port = port if port is not None else settings.listen_port
        self.app: ProxyApp = make_proxy_app(service)
        self._server: HostedServer | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start listening; returns once the proxy accepts connections."""
        if self.running:
            return
        settings = self.service.settings
        warning, refuse = exposure(self.host, settings.api_key, settings.allow_insecure_listen)
        if refuse and warning is not None:
            raise ProxyStartError(warning)
        if warning is not None:
            self.service.events.warning(Kind.CONNECTION, warning)
        sock = bind_socket(self.host, self.port)
        self.port = int(sock.getsockname()[1])
        self._server = HostedServer(server_config(self.app, self.host, self.port))
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="kvtui-proxy")
        while not self._server.started:
            if self._task.done():
                sock.close()
                error = self._task.exception()
                raise ProxyStartError(f"The proxy stopped while starting: {error}")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop listening, end open requests (their generations are cancelled), close clients."""
        server, task = self._server, self._task
        self._server = self._task = None
        if server is not None and task is not None:
            server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout=5)
            except TimeoutError:
                server.force_exit = True
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            except asyncio.CancelledError:
                task.cancel()
                raise
            except Exception:  # a failure inside uvicorn must not prevent closing the client
                pass
        await self.app.aclose()


def _print_event(event: Event) -> None:
    mark = {Level.INFO: " ", Level.WARNING: "!", Level.ERROR: "✗"}[event.level]
    print(f"{event.time.astimezone():%H:%M:%S} {mark} [{event.kind}] {event.message}", flush=True)


async def _poll(service: KvService, stop: asyncio.Event) -> None:
    """Poll ``/slots`` so connection changes and server restarts show up in the log."""
    while not stop.is_set():
        await service.refresh()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=service.settings.poll_interval)


async def _logged(what: str, service: KvService, job: Coroutine[Any, Any, None]) -> None:
    """Run a background job; a crash is reported in the event log instead of vanishing."""
    try:
        await job
    except Exception as err:
        service.events.error(Kind.ERROR, f"The {what} stopped: {err!r}")


async def run_proxy_forever(settings: Settings) -> int:
    """``kvtui proxy``: serve until Ctrl-C (or SIGTERM). Returns the process exit code."""
    service = KvService(settings)
    unsubscribe = service.events.subscribe(_print_event)
    proxy = ProxyServer(service)
    try:
        await proxy.start()
    except ProxyStartError as err:
        print(f"kvtui proxy: {err}", file=sys.stderr)
        unsubscribe()
        await service.aclose()
        return 1
    print(f"kvtui proxy listening on {proxy.url}, forwarding to {settings.server_url}")
    print(
        "In SillyTavern: API Connections → Text Completion → API Type llama.cpp → "
        f"API URL = {proxy.url}"
    )
    if not service.follows_chats:
        print("No SillyTavern directory set (--st-dir): chats are not followed automatically.")
    else:
        print(f"Following the active chat in {settings.st_dir}")
    if settings.save_dir is None:
        print("No save directory set (--save-dir): autosave and autoload are off.")
    print("Press Ctrl-C to stop.", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tasks = [
        asyncio.create_task(_logged("slot poll", service, _poll(service, stop))),
        asyncio.create_task(_logged("save watcher", service, service.watch_saves(stop))),
    ]
    if service.follows_chats:
        watch = service.follow_chats(stop)
        tasks.append(asyncio.create_task(_logged("chat-switch watcher", service, watch)))
    from kvtui.sideprompts.follow import LiveSidePrompts, follows_live_chat

    if follows_live_chat(service):  # side prompts' interval trigger on the live chat
        live = LiveSidePrompts(service).run(stop)
        tasks.append(asyncio.create_task(_logged("side-prompt follower", service, live)))
    try:
        await stop.wait()
    except asyncio.CancelledError:  # KeyboardInterrupt delivered as a cancellation
        pass
    finally:
        print("Stopping…", flush=True)
        stop.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        for task in tasks:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=3)
        await proxy.stop()
        unsubscribe()
        await service.aclose()
    return 0
