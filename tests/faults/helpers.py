"""What the fault cases check after each fault, on real files and the real server.

* :func:`slot_tokens` reads what a slot holds without changing it: the server saves the slot to a
  private file, whose token list is read back and compared with a character's prompt.
* :func:`audit` counts saves lost (gone, or changed) and checks nothing incomplete is listed.
* :func:`wiped_by_mistake` counts slots the book still gives a character whose cache they no
  longer hold; :func:`restores_own_cache` routes each character again, as its next request would,
  and counts those whose cache did not come back (a save that did not restore its character).
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import Callable
from pathlib import Path

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama import LlamaClient
from kvtui.service import KvService
from kvtui.slots import GenType
from kvtui.store import SaveStore, is_private_name
from kvtui.store.names import private_name
from kvtui.store.slotfile import HEADER_BYTES, SEQ_MAGIC

CHAT = "Forest Party"


def prompt_for(character: str, n_tokens: int) -> str:
    """A SillyTavern-shaped prompt of about ``n_tokens`` tokens, different per character; a
    longer one continues a shorter one's story."""
    lines = "".join(
        f"Alex: {character}, tell me about stone {i} of the old road.\n"
        f"{character}: Stone {i} is where {character} once rested.\n"
        for i in range(n_tokens // 77 + 1)
    )
    return f"{character} is a member of the Forest Party.\n{lines}{character}:"


def file_tokens(path: Path) -> list[int]:
    """The token ids a llama.cpp slot file holds (bare or the server's record form)."""
    with open(path, "rb") as fh:
        magic, _version, count = struct.unpack("<III", fh.read(HEADER_BYTES))
        assert magic == SEQ_MAGIC, f"{path.name} is not a slot file"
        words = list(struct.unpack(f"<{count}i", fh.read(4 * count)))
    if len(words) >= 3 and words[0] == -1 and words[1] == 1:
        return words[3 : 3 + words[2]]
    return words


async def slot_tokens(client: LlamaClient, slot: int, save_dir: Path) -> list[int]:
    """What ``slot`` holds now, read through a private save (the slot is left as it was)."""
    name = private_name("probe")
    await client.save(slot, name)
    try:
        return await asyncio.to_thread(file_tokens, save_dir / name)
    finally:
        (save_dir / name).unlink(missing_ok=True)


def common_prefix(a: list[int], b: list[int]) -> list[int]:
    """The tokens two prompts share (a slot holding either one holds these)."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def holds(tokens: list[int], expected: list[int]) -> bool:
    return len(expected) > 0 and tokens[: len(expected)] == expected


def saves_of(save_dir: Path) -> dict[str, bytes]:
    """Every listed save's bytes (the verified ones a fault must not cost)."""
    store = SaveStore(save_dir)
    store.rescan()
    return {e.filename: (save_dir / e.filename).read_bytes() for e in store.entries() if e.valid}


def audit(save_dir: Path, before: dict[str, bytes], *, n_ctx: int, planted: bool = False) -> int:
    """Saves of ``before`` gone or changed; asserts no private leftover or damaged file is
    listed (``planted``: the case put damaged files there itself) and every listed save passes
    the restore check."""
    store = SaveStore(save_dir)
    if not planted:
        store.repair()
    store.rescan()
    names = set(os.listdir(save_dir))
    assert not [n for n in names if is_private_name(n)], sorted(names)
    assert planted or store.damaged() == [], [e.problem for e in store.damaged()]
    for entry in store.entries():
        store.check_restorable(entry, n_ctx=n_ctx)
    lost = [n for n in before if n not in names]
    changed = [
        n for n, data in before.items() if n in names and (save_dir / n).read_bytes() != data
    ]
    return len(lost) + len(changed)


async def wiped_by_mistake(
    service: KvService, save_dir: Path, expected: dict[str, list[int]]
) -> int:
    """Slots the book still gives a character as warm that do not hold its cache."""
    await service.refresh()
    wiped = 0
    for record in service.book.snapshot():
        if record.character is None or not record.autoload_done:
            continue  # free, or marked to be restored on its next request
        want = expected.get(record.character)
        if want is None:
            continue
        got = await slot_tokens(service.client, record.slot, save_dir)
        if not holds(got, want):
            wiped += 1
    return wiped


async def restores_own_cache(
    service: KvService, save_dir: Path, expected: dict[str, list[int]], chat: str = CHAT
) -> int:
    """Route every character as its next request would; those whose slot then does not hold
    its own cache (restored from its save, or kept) are counted as lost."""
    lost = 0
    for character, want in expected.items():
        decision = await service.route(chat, character, GenType.NORMAL)
        got = await slot_tokens(service.client, decision.slot, save_dir)
        if not holds(got, want):
            lost += 1
    return lost


async def warm_and_save(
    service: KvService, character: str, n_tokens: int, chat: str = CHAT
) -> list[int]:
    """Route ``character``, fill its slot with its prompt, save it; the prompt's tokens."""
    prompt = prompt_for(character, n_tokens)
    decision = await service.route(chat, character, GenType.NORMAL, prompt=prompt)
    await service.complete(prompt, slot=decision.slot)
    await service.save_slot(decision.slot)
    expected = await service.tokenize(prompt, add_special=True)
    got = await slot_tokens(service.client, decision.slot, service.require_store().directory)
    assert holds(got, expected), "the probe does not see the prompt in the slot"
    return expected


async def wait_until(
    condition: Callable[[], bool], done: Callable[[], bool], limit: float = 300.0
) -> bool:
    """Poll ``condition`` until it holds (True) or ``done`` does first (False); bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        if condition():
            return True
        if done():
            return condition()
        await asyncio.sleep(0.0005)
    raise AssertionError("the condition never held within the bound")


def server_has_open(server: EmbeddedServer, directory: Path) -> bool:
    """Whether llama-server's process has a file of ``directory`` open (a save or restore
    under way), read from ``/proc``."""
    pid = server.pid
    if pid is None:
        return False
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return False
    prefix = str(directory) + os.sep
    for fd in fds:
        try:
            target = os.readlink(f"{fd_dir}/{fd}")
        except OSError:
            continue
        if target.startswith(prefix):
            return True
    return False


def reset(server: EmbeddedServer) -> None:
    """The server up, its slots erased, its save directory empty."""
    import json
    import urllib.request

    if not server.running:
        server.start()
    for slot in range(server.n_slots):
        req = urllib.request.Request(
            f"{server.url}/slots/{slot}?action=erase",
            data=json.dumps({}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=120):
            pass
    assert server.save_dir is not None
    for path in server.save_dir.iterdir():
        if path.is_file() or path.is_symlink():
            path.unlink()
