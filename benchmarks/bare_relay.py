"""The floor for the proxy benchmark: kvtui's own relay stack with no routing at all.

The same uvicorn server (configured as ``kvtui proxy`` configures it, on a socket bound the same
way) and the same relay (:class:`kvtui.proxy.relay.Relay`: its lean HTTP/1.1 client for a plain
``http://`` server, with the same header policy) forward every request to llama-server byte for
byte. Nothing is parsed, identified, routed or
booked, so ``kvtui proxy`` minus this is what routing costs.

Run: ``python -m benchmarks.bare_relay --upstream URL --listen 127.0.0.1:PORT`` (until SIGINT).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from kvtui.events import EventLog
from kvtui.proxy.asgi import Receive, Scope, Send, read_body, request_target
from kvtui.proxy.headers import upstream_headers
from kvtui.proxy.relay import Relay, UpstreamRequest
from kvtui.proxy.run import HostedServer, bind_socket, server_config


class BareRelay:
    """An ASGI app that relays every HTTP request to ``upstream``."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.relay = Relay(EventLog())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if body is None:
            return
        request = UpstreamRequest(
            method=str(scope["method"]),
            base=self.upstream,
            url=self.upstream + request_target(scope),
            headers=upstream_headers(list(scope["headers"]), None),
            body=body,
        )
        await self.relay.forward(request, receive, send)


async def serve(upstream: str, host: str, port: int) -> None:
    app = BareRelay(upstream)
    sock = bind_socket(host, port)
    server = HostedServer(server_config(app, host, port))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: setattr(server, "should_exit", True))
    try:
        await server.serve(sockets=[sock])
    finally:
        await app.relay.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    args = parser.parse_args()
    host, _, port = str(args.listen).rpartition(":")
    asyncio.run(serve(str(args.upstream), host, int(port)))


if __name__ == "__main__":
    main()
