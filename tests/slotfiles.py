"""Test helper: bytes shaped like llama-server slot files (header as the embedded server writes)."""

from __future__ import annotations

import struct

from kvtui.store.slotfile import SEQ_MAGIC


def slot_bytes(n_tokens: int = 3, size: int | None = None, *, version: int = 4) -> bytes:
    """A slot file holding ``n_tokens`` (the server's token record form), ``size`` bytes long."""
    record = [-1, 1, n_tokens, *range(65, 65 + n_tokens), 0]
    data = struct.pack("<III", SEQ_MAGIC, version, len(record))
    data += struct.pack(f"<{len(record)}i", *record)
    body = bytes(size - len(data)) if size is not None else b"\0" * (16 + 8 * n_tokens)
    if size is not None and size < len(data):
        raise ValueError("size too small for the header")
    return data + body
