"""Reading the header of a llama-server slot save file, without the server.

``llama_state_seq_save_file`` (llama.cpp ``src/llama-context.cpp``) writes, little-endian::

    u32 magic    LLAMA_STATE_SEQ_MAGIC = 0x67677371 ('ggsq'; bytes "qsgg" on disk)
    u32 version  LLAMA_STATE_SEQ_VERSION (1-3 in 2024-2026 builds, 4 in the embedded xllamacpp)
    u32 count    number of int32 "tokens" that follow
    i32 × count  the slot's tokens
    ...          the sequence's KV state (cells, then per-layer K/V rows)

Recent llama-server builds store a server-side token record in that array instead of the bare
tokens: ``[-1, 1, n, t1 … tn, 0]`` (a ``LLAMA_TOKEN_NULL`` marker, a record version, the token
count, the tokens, the count of media chunks), so ``count == n + 4`` — verified on files the
embedded server writes. :func:`read_header` understands both and reports the real token count.

The header proves a file is a slot save (magic), not cut inside its token list, and how many
tokens it holds (so a file too big for a slot is refused before the server clears that slot on
a failed restore). For the KV part, kvtui's sidecar ``n_written`` vouches for its own saves;
for sidecar-less files :func:`state_is_complete` walks the layout of the version the embedded
server writes and tells a file cut short from a whole one (other versions: header only).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

SEQ_MAGIC = 0x67677371
KNOWN_VERSIONS = frozenset({1, 2, 3, 4})
HEADER_BYTES = 12
_MAX_PEEK = 5  # int32s of the token array to read for the record form


class SlotFileError(ValueError):
    """Why a file is not a usable slot save (one line, for users)."""


@dataclass(frozen=True)
class SlotFileHeader:
    """What a slot file's header says. ``n_tokens`` is the slot's token count."""

    version: int
    n_tokens: int
    token_words: int
    """The raw ``count`` field (``n_tokens + 4`` for the record form)."""
    size: int

    @property
    def min_size(self) -> int:
        """Bytes up to the end of the token array: the least a complete file can have."""
        return HEADER_BYTES + 4 * self.token_words


def parse_header(head: bytes, size: int) -> SlotFileHeader:
    """The header from the file's first bytes (at least ``HEADER_BYTES + 20`` when available)."""
    if size == 0:
        raise SlotFileError("it is empty (0 bytes)")
    if len(head) < HEADER_BYTES:
        raise SlotFileError(f"it is only {size} bytes, shorter than a slot file's header")
    magic, version, count = struct.unpack_from("<III", head)
    if magic != SEQ_MAGIC:
        raise SlotFileError("it is not a llama.cpp slot save (wrong magic number)")
    if not 1 <= version <= 64:
        raise SlotFileError(f"it has an unknown slot file version ({version})")
    if HEADER_BYTES + 4 * count > size:
        raise SlotFileError(
            f"it is cut short: its header announces {count} tokens, more than its {size} bytes hold"
        )
    n_tokens = count
    words = min(count, _MAX_PEEK, (len(head) - HEADER_BYTES) // 4)
    peek = struct.unpack_from(f"<{words}i", head, HEADER_BYTES) if words else ()
    if len(peek) >= 3 and peek[0] == -1 and peek[1] == 1 and 0 <= peek[2] <= count - 3:
        n_tokens = peek[2]  # the server's token record: [-1, 1, n, tokens…, n_media]
    return SlotFileHeader(version=version, n_tokens=n_tokens, token_words=count, size=size)


def read_header(path: Path) -> SlotFileHeader:
    """Read and check the header of the slot file at ``path`` (symlinks are refused)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        raise SlotFileError(f"it cannot be read ({err.strerror or err})") from err
    try:
        st = os.fstat(fd)
        head = os.read(fd, HEADER_BYTES + 4 * _MAX_PEEK)
    except OSError as err:
        raise SlotFileError(f"it cannot be read ({err.strerror or err})") from err
    finally:
        os.close(fd)
    return parse_header(head, st.st_size)


_SANE_ROW = 1 << 24
_SANE_LAYERS = 1024
_SANE_STREAMS = 64
_SANE_SEQS = 256


class _Reader:
    """Bounded little-endian reads from an open file; ``None`` past the end."""

    def __init__(self, fh: BinaryIO, size: int, offset: int) -> None:
        self.fh, self.size, self.pos = fh, size, offset

    def read(self, n: int) -> bytes:
        self.fh.seek(self.pos)
        return self.fh.read(n)

    def take(self, fmt: str) -> tuple[int, ...] | None:
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            return None
        data = self.read(n)
        if len(data) < n:
            return None
        self.pos += n
        return struct.unpack(fmt, data)

    def skip(self, n: int) -> bool:
        if self.pos + n > self.size:
            return False
        self.pos += n
        return True


class _Implausible(Exception):
    pass


class _Short(Exception):
    pass


def _need(value: tuple[int, ...] | None) -> tuple[int, ...]:
    if value is None:
        raise _Short
    return value


def _skip_single_seq_cells(r: _Reader, cells: int) -> bool:
    """Skip ``cells`` cells in one read when each belongs to one sequence (a slot save's
    cells always do); False, with nothing consumed, when they do not or the file ends."""
    size = 12 * cells
    if r.pos + size > r.size:
        return False
    block = r.read(size)
    if len(block) < size or any(n != 1 for _p, n, _s in struct.iter_unpack("<iIi", block)):
        return False
    r.pos += size
    return True


def _walk_stream(r: _Reader, n_tokens: int) -> None:
    """One stream of the embedded server's layout (see ``state_is_complete``)."""
    (cells,) = _need(r.take("<I"))
    if cells > max(n_tokens, 0) + 1:
        raise _Implausible
    if not cells:
        return
    if not _skip_single_seq_cells(r, cells):
        for _ in range(cells):
            _pos, n_seq = _need(r.take("<iI"))
            if not 0 < n_seq <= _SANE_SEQS:
                raise _Implausible
            if not r.skip(4 * n_seq):
                raise _Short
    v_trans, n_layer = _need(r.take("<II"))
    if v_trans not in (0, 1) or not 0 < n_layer <= _SANE_LAYERS:
        raise _Implausible
    if not r.skip(8):
        raise _Short
    for _ in range(n_layer):  # K rows
        k_type, row = _need(r.take("<iQ"))
        if not 0 <= k_type < 64 or not 0 < row <= _SANE_ROW:
            raise _Implausible
        if not r.skip(row * cells):
            raise _Short
    for _ in range(n_layer):  # V rows, or V elements when transposed
        if v_trans:
            v_type, size_el, n_embd = _need(r.take("<iII"))
            if not 0 <= v_type < 64 or not 0 < size_el * n_embd <= _SANE_ROW:
                raise _Implausible
            if not r.skip(size_el * n_embd * cells):
                raise _Short
        else:
            v_type, row = _need(r.take("<iQ"))
            if not 0 <= v_type < 64 or not 0 < row <= _SANE_ROW:
                raise _Implausible
            if not r.skip(row * cells):
                raise _Short


def state_is_complete(path: Path, header: SlotFileHeader) -> bool | None:
    """Whether the KV part after the header is all there: True, False (cut short) or None.

    Walks the layout that the embedded server's build writes (version 4; verified byte for byte
    on its files): ``u32 n_stream``, then per stream ``u32 cells``, the cells (``i32 pos, u32
    n_seq, i32 × n_seq``), ``u32 v_trans, u32 n_layer``, 8 bytes, per layer ``i32 type, u64
    row`` and ``row × cells`` bytes of K, then the same for V. Other versions, and anything
    implausible for this layout, give None: then only the header vouches for the file.
    """
    if header.version != 4:
        return None
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fh = os.fdopen(os.open(path, flags), "rb")
    except OSError:
        return None
    with fh:
        try:
            reader = _Reader(fh, os.fstat(fh.fileno()).st_size, header.min_size)
            (streams,) = _need(reader.take("<I"))
            if not 0 < streams <= _SANE_STREAMS:
                return None
            for _ in range(streams):
                _walk_stream(reader, header.n_tokens)
        except _Implausible:
            return None
        except _Short:
            return False
        except OSError:
            return None
    return True if reader.pos == reader.size else None
