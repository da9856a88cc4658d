"""Header policy: what the proxy passes on in each direction, and what it keeps to itself.

Hop-by-hop headers (and any the ``Connection`` header lists) never cross; ``Host`` and
``Content-Length`` are recomputed (the body may be rewritten); kvtui's own ``X-KVTUI-*`` headers
stay with kvtui; the configured API key replaces the client's ``Authorization``.
"""

from __future__ import annotations

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
_REQUEST_DROP = HOP_BY_HOP | {b"host", b"content-length"}

RawHeaders = list[tuple[bytes, bytes]]


def _connection_listed(raw: RawHeaders) -> set[bytes]:
    return {
        token.strip().lower()
        for name, value in raw
        if name.lower() == b"connection"
        for token in value.split(b",")
    }


def upstream_headers(raw: RawHeaders, api_key: str | None) -> RawHeaders:
    """The client's headers minus hop-by-hop ones and kvtui's own; the API key when set."""
    drop = _REQUEST_DROP | _connection_listed(raw)
    headers = [
        (name, value)
        for name, value in raw
        if name.lower() not in drop and not name.lower().startswith(b"x-kvtui-")
    ]
    if api_key:
        headers = [(n, v) for n, v in headers if n.lower() != b"authorization"]
        headers.append((b"authorization", f"Bearer {api_key}".encode()))
    return headers


def response_headers(raw: RawHeaders) -> RawHeaders:
    """llama-server's answer headers minus hop-by-hop ones (uvicorn frames the body itself)
    and minus its permissive CORS headers: kvtui decides which pages may read an answer."""
    listed = _connection_listed(raw)
    return [
        (n, v)
        for n, v in raw
        if n.lower() not in HOP_BY_HOP
        and n.lower() not in listed
        and not n.lower().startswith(b"access-control-")
    ]


def header_map(raw: RawHeaders) -> dict[str, str]:
    """Headers as lower-case text names to text values (UTF-8, else Latin-1)."""

    def text(value: bytes) -> str:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("latin-1")

    return {text(name).lower(): text(value) for name, value in raw}
