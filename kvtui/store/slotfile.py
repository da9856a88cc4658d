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
a failed restore). It cannot prove the KV part is complete: kvtui's sidecar ``n_written`` does.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

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
