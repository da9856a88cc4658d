"""The proxy's door policy: who may talk to it, which slot ids exist, what a body may be.

llama-server itself trusts whoever reaches its port: it reads ``/slots/0abc`` as slot 0, answers
any web page with a permissive CORS header, and takes a body of any size. kvtui sits in front of
it on the user's machine, where a page open in the user's browser can reach ``127.0.0.1``. So the
proxy refuses, before anything is forwarded:

* a ``Host`` that is not a loopback name or address, nor the configured listen address (a DNS
  rebinding page names its own host);
* a browser ``Origin`` the user did not allow (SillyTavern's server-side requests carry none);
* a missing or wrong API key when one is configured (anonymous clients are not upgraded);
* a slot id in any form but plain decimal digits;
* a body over the configured limit (413 as soon as it is known), and JSON kvtui could not pass
  on faithfully: invalid, absurdly nested, non-finite numbers or lone surrogates (400).

Every refusal is a :class:`Refusal` with the status and a message that says what to do.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]

MAX_JSON_DEPTH = 64
"""Deeper JSON than any generation request needs; deeper is refused, not parsed."""

PUBLIC_PATHS = frozenset({"/health", "/v1/health", "/models", "/v1/models"})
"""Paths llama-server itself answers without an API key."""

_SLOT_PATH = re.compile(r"/slots/([0-9]{1,6})")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


@dataclass(frozen=True)
class Refusal:
    """Why the proxy will not forward a request: an HTTP status and a message for the user."""

    status: int
    message: str
    kind: str = "invalid_request_error"


# -- who is asking ---------------------------------------------------------------------------


def host_name(host_header: str) -> str:
    """The host part of a ``Host`` header: ``[::1]:8081`` → ``::1``, ``Localhost.`` →
    ``localhost``."""
    value = host_header.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.rsplit(":", 1)[0]
    return value.rstrip(".")


def is_loopback(name: str) -> bool:
    """A loopback name (``localhost``, ``*.localhost``) or address (127.0.0.0/8, ::1)."""
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def is_address(name: str) -> bool:
    """An IP address literal: a page can only reach kvtui under one by being served from it,
    so it cannot be a DNS rebinding attack (those name the attacker's host)."""
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_host(
    host_header: str | None, listen_host: str, allowed: Iterable[str] = ()
) -> Refusal | None:
    """Refuse a ``Host`` name that is neither loopback, the listen address, nor allowed.

    IP address literals pass (see :func:`is_address`). A request without ``Host`` (HTTP/1.0,
    some scripts) cannot come from a browser page, so it passes.
    """
    if not host_header:
        return None
    name = host_name(host_header)
    permitted = {host_name(h) for h in allowed} | {host_name(listen_host)}
    if is_loopback(name) or is_address(name) or name in permitted:
        return None
    return Refusal(
        403,
        f"kvtui proxy: refused a request for host {name!r}: it is not this machine's loopback "
        "address nor kvtui's listen address (a web page may be trying DNS rebinding). To reach "
        "kvtui by that name, add it to allowed_hosts in kvtui's config file.",
        "forbidden",
    )


def origin_allowed(origin: str | None, allowed: Iterable[str]) -> bool:
    """True without a browser ``Origin`` or for one the user allowed (exact, or ``*``)."""
    if origin is None:
        return True
    wanted = origin.strip().rstrip("/").lower()
    for item in allowed:
        entry = item.strip().rstrip("/").lower()
        if entry == "*" or entry == wanted:
            return True
    return False


def check_origin(origin: str | None, allowed: Iterable[str]) -> Refusal | None:
    """Refuse a browser page whose origin the user did not list in ``allowed_origins``."""
    if origin_allowed(origin, allowed):
        return None
    return Refusal(
        403,
        f"kvtui proxy: refused a request from the web page {origin!r}. Only pages the user "
        "allowed may drive the slots; SillyTavern's own server needs no entry. To allow this "
        "page, add its origin to allowed_origins in kvtui's config file.",
        "forbidden",
    )


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The API key a client presented: ``Authorization: Bearer KEY`` or ``X-Api-Key: KEY``."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    key = headers.get("x-api-key")
    return key.strip() if key else None


def check_api_key(path: str, headers: Mapping[str, str], api_key: str | None) -> Refusal | None:
    """With an API key configured, every client presents it (public paths excepted)."""
    if not api_key or path in PUBLIC_PATHS:
        return None
    if presented_key(headers) == api_key:
        return None
    return Refusal(
        401,
        "kvtui proxy: this server needs an API key. In SillyTavern enter the same key as "
        "kvtui's api_key in API Connections → API key; other clients send "
        "'Authorization: Bearer KEY'.",
        "authentication_error",
    )


def cors_headers(origin: str | None, allowed: Iterable[str]) -> list[tuple[bytes, bytes]]:
    """CORS answer headers for an allowed browser origin; none for anyone else."""
    if origin is None or not origin_allowed(origin, allowed):
        return []
    return [
        (b"access-control-allow-origin", origin.encode("latin-1", "replace")),
        (b"vary", b"Origin"),
        (b"access-control-allow-credentials", b"true"),
    ]


def strip_cors(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """llama-server's own (permissive) CORS headers, removed: kvtui decides who may read."""
    return [(n, v) for n, v in headers if not n.lower().startswith(b"access-control-")]


# -- what is asked ---------------------------------------------------------------------------


def parse_slot_path(raw_path: str, path: str) -> int | Refusal:
    """The slot id of ``POST /slots/{id}``, in plain decimal digits only.

    llama-server reads ``0abc``, ``0x1``, ``+0`` or `` 1`` as a number and acts on that slot, so
    anything but digits (in the raw path and the decoded one alike) is refused.
    """
    for candidate in (raw_path, path):
        if _SLOT_PATH.fullmatch(candidate) is None:
            shown = raw_path[len("/slots/") :] if raw_path.startswith("/slots/") else raw_path
            return Refusal(
                400,
                f"kvtui proxy: {shown!r} is not a slot id. Use the slot's number in plain digits, "
                "e.g. POST /slots/0?action=save.",
            )
    return int(path.removeprefix("/slots/"))


async def read_body(receive: Receive, limit: int, declared: str | None) -> bytes | Refusal | None:
    """The whole request body, a 413 refusal as soon as it is over ``limit`` bytes, or None
    when the client left first. A declared ``Content-Length`` over the limit is refused before
    a byte of the body is read."""
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            return Refusal(400, f"kvtui proxy: Content-Length {declared!r} is not a number.")
        if size > limit:
            return _too_large(limit)
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:
            return _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _too_large(limit: int) -> Refusal:
    return Refusal(
        413,
        f"kvtui proxy: the request body is over {limit // (1024 * 1024)} MiB. Raise "
        "max_body_mb in kvtui's config file if such prompts are meant.",
        "request_too_large",
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json_object(body: bytes, path: str) -> dict[str, Any] | Refusal:
    """A generation body as a JSON object kvtui can forward exactly, or a 400 saying why."""
    try:
        data = json.loads(body, parse_constant=_no_constant)
    except RecursionError:
        return Refusal(400, f"kvtui proxy: the JSON body of POST {path} is nested too deeply.")
    except (UnicodeDecodeError, ValueError) as err:
        return Refusal(
            400,
            f"kvtui proxy: the body of POST {path} is not valid JSON ({err}). "
            'Send a JSON object, e.g. {"prompt": "Hello", "n_predict": 16}.',
        )
    if not isinstance(data, dict):
        return Refusal(
            400,
            f"kvtui proxy: the body of POST {path} must be a JSON object, "
            f"not {type(data).__name__}.",
        )
    problem = _unforwardable(data, 0)
    if problem is not None:
        return Refusal(400, f"kvtui proxy: the body of POST {path} {problem}.")
    return data


def _unforwardable(value: Any, depth: int) -> str | None:
    """Why ``value`` cannot be re-encoded as the same JSON, or None."""
    if depth > MAX_JSON_DEPTH:
        return f"is nested deeper than {MAX_JSON_DEPTH} levels"
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "holds a lone surrogate escape (\\ud800-\\udfff) that is not text"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "holds a number too large for JSON"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _unforwardable(key, depth + 1) or _unforwardable(item, depth + 1)
            if problem is not None:
                return problem
        return None
    if isinstance(value, list):
        for item in value:
            problem = _unforwardable(item, depth + 1)
            if problem is not None:
                return problem
    return None


def exposure(
    listen_host: str, api_key: str | None, allow_insecure: bool
) -> tuple[str | None, bool]:
    """What to tell the user about listening on ``listen_host``: (warning or None, refuse).

    Loopback is private to the machine. Any other address lets the network drive the slots and
    read every prompt, so it needs an API key — or the user's explicit ``allow_insecure_listen``.
    """
    name = host_name(listen_host)
    if is_loopback(name):
        return None, False
    where = "every network interface" if name in ("0.0.0.0", "::") else name
    if api_key:
        return (
            f"The proxy listens on {where}: other machines can reach it. Clients must present "
            "the API key; add their host names to allowed_hosts if they use names.",
            False,
        )
    if allow_insecure:
        return (
            f"The proxy listens on {where} WITHOUT an API key: anyone on the network can drive "
            "the slots and read prompts (allow_insecure_listen is on).",
            False,
        )
    return (
        f"Refusing to listen on {where} without an API key: anyone on the network could drive "
        "the slots and read every prompt. Set api_key (and the same key in SillyTavern), or "
        "listen on 127.0.0.1, or set allow_insecure_listen = true if you really mean it.",
        True,
    )
