"""Minimal PNG chunk reading and writing, enough for SillyTavern character cards.

SillyTavern stores a card's JSON base64-encoded in PNG text chunks. Reading walks the chunk list
and seeks past image data, so a multi-megabyte avatar costs a few small reads. Writing produces a
small valid RGB image (zlib + struct only, no imaging library) with text chunks before ``IEND``,
where SillyTavern puts them.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from kvtui.errors import KvtuiError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# A text chunk larger than this is not a card; refuse rather than read it into memory.
_MAX_TEXT_CHUNK = 64 * 1024 * 1024


class PngError(KvtuiError, ValueError):
    """The bytes are not a PNG file, or its chunk list is damaged."""


def _decode_text_chunk(kind: bytes, data: bytes) -> tuple[str, str] | None:
    """``(keyword, text)`` of a tEXt, zTXt or iTXt chunk, or None for a damaged one."""
    keyword, sep, rest = data.partition(b"\0")
    if not sep:
        return None
    name = keyword.decode("latin-1")
    try:
        if kind == b"tEXt":
            return name, rest.decode("latin-1")
        if kind == b"zTXt":
            # One byte of compression method (0 = zlib), then the compressed Latin-1 text.
            if not rest or rest[0] != 0:
                return None
            return name, zlib.decompress(rest[1:]).decode("latin-1")
        if kind == b"iTXt":
            # flag, method, language tag \0, translated keyword \0, UTF-8 text.
            if len(rest) < 2:
                return None
            flag, method = rest[0], rest[1]
            _lang, _, rest = rest[2:].partition(b"\0")
            _translated, _, text = rest.partition(b"\0")
            if flag:
                if method != 0:
                    return None
                text = zlib.decompress(text)
            return name, text.decode("utf-8")
    except (zlib.error, UnicodeDecodeError):
        return None
    return None


def iter_text_chunks(stream: BinaryIO) -> Iterator[tuple[str, str]]:
    """Yield ``(keyword, text)`` for every text chunk of the PNG in ``stream``, in file order.

    Non-text chunks are skipped with a seek. Raises ``PngError`` when the signature is wrong or
    the chunk list is truncated before any ``IEND``; damaged text chunks are skipped silently.
    """
    if stream.read(8) != PNG_SIGNATURE:
        raise PngError("not a PNG file")
    while True:
        head = stream.read(8)
        if len(head) == 0:
            return  # no IEND; tolerate, as browsers do
        if len(head) < 8:
            raise PngError("truncated chunk header")
        length, kind = struct.unpack(">I4s", head)
        if kind == b"IEND":
            return
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            if length > _MAX_TEXT_CHUNK:
                raise PngError(f"text chunk of {length} bytes")
            data = stream.read(length)
            if len(data) < length:
                raise PngError("truncated text chunk")
            stream.seek(4, 1)  # CRC
            decoded = _decode_text_chunk(kind, data)
            if decoded is not None:
                yield decoded
        else:
            stream.seek(length + 4, 1)


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def text_chunk(keyword: str, text: str) -> bytes:
    """An encoded ``tEXt`` chunk (keyword and text must be Latin-1, as base64 is)."""
    return _chunk(b"tEXt", keyword.encode("latin-1") + b"\0" + text.encode("latin-1"))


def encode_png(
    pixels: Sequence[bytes],
    width: int,
    text: Sequence[tuple[str, str]] = (),
) -> bytes:
    """An 8-bit RGB PNG from rows of ``width * 3`` bytes, with ``tEXt`` chunks before ``IEND``.

    The output is byte-for-byte deterministic for the same input.
    """
    height = len(pixels)
    if width <= 0 or height <= 0 or any(len(row) != width * 3 for row in pixels):
        raise ValueError("pixels must be a non-empty list of rows of width * 3 bytes")
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\0" + bytes(row) for row in pixels)  # filter type 0 per row
    parts = [PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", zlib.compress(raw, 9))]
    parts += [text_chunk(keyword, value) for keyword, value in text]
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)
