"""The slot-file header and KV walk, on files the real embedded server writes."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama import LlamaClient
from kvtui.store.slotfile import (
    SEQ_MAGIC,
    SlotFileError,
    parse_header,
    read_header,
    state_is_complete,
)


@pytest.mark.server
async def test_real_files_parse_and_every_cut_is_detected(
    clean_server: EmbeddedServer, save_dir: Path, tmp_path: Path
) -> None:
    async with LlamaClient(clean_server.url, save_dir=save_dir) as client:
        sizes = {}
        for n in (0, 9, 300):
            if n:
                await client.completion(list(range(65, 65 + n)), n_predict=1, id_slot=0)
            else:
                await client.erase(0)
            result = await client.save(0, f"n{n}.bin")
            sizes[n] = result.n_written
            assert result.n_saved == n
    for n, size in sizes.items():
        path = save_dir / f"n{n}.bin"
        header = read_header(path)
        assert (header.n_tokens, header.size) == (n, size)
        assert state_is_complete(path, header) is True
        data = path.read_bytes()
        cut = tmp_path / "cut.bin"
        for end in sorted({header.min_size, header.min_size + 3, size // 2, size - 1}):
            if end < header.min_size or end >= size:
                continue
            cut.write_bytes(data[:end])
            assert state_is_complete(cut, read_header(cut)) is False, (n, end)
        for end in (0, 5, header.min_size - 1):
            if end < 0:
                continue
            with pytest.raises(SlotFileError):
                parse_header(data[:end], end)


def test_older_versions_give_the_bare_token_count() -> None:
    head = struct.pack("<III", SEQ_MAGIC, 2, 5) + struct.pack("<5i", 1, 2, 3, 4, 5)
    header = parse_header(head, len(head) + 100)
    assert (header.version, header.n_tokens, header.token_words) == (2, 5, 5)
    with pytest.raises(SlotFileError, match="wrong magic"):
        parse_header(b"GGUF" + head[4:], 200)
    with pytest.raises(SlotFileError, match="cut short"):
        parse_header(head, 20)
