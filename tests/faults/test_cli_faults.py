"""The headless commands when the disk says no: a read-only state directory, an unreadable save
directory, a reader that closes the pipe. Each is a real ``kvtui`` process against the real
server; each must end in one line saying what to do, a non-zero exit where the command did not
fully succeed, and no traceback — and the slot's cache and the saves must be as they were.

A read-only state directory is a tmpfs mounted read-only (root) or a directory kvtui may not
write (others); an unreadable save directory is ``chmod 000``, run without the capabilities that
let root read anything anyway (``setpriv``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.llama import LlamaClient
from kvtui.slots import SlotBook
from tests.faults.conftest import TALLY, fault_case
from tests.faults.helpers import prompt_for, reset, saves_of, slot_tokens

pytestmark = pytest.mark.server

UNPRIVILEGED = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


def kvtui(
    server: EmbeddedServer, state: Path, *args: str, stdout: int | None = None, plain: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run ``kvtui ARGS`` (``plain``: as a user without root's powers over permissions)."""
    env = dict(os.environ, KVTUI_CONFIG=str(state.parent / "config.toml"))
    env.pop("KVTUI_STATE_DIR", None)
    cmd = [sys.executable, "-m", "kvtui.cli", *args]
    cmd += ["--server", server.url, "--save-dir", str(server.save_dir), "--state-dir", str(state)]
    if plain and os.geteuid() == 0:
        cmd = UNPRIVILEGED + cmd
    return subprocess.run(
        cmd,
        env=env,
        stdout=stdout if stdout is not None else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        check=False,
    )


def one_clear_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kvtui: "), proc.stderr
    return lines[0]


@pytest.fixture
def warm(fault_llama: EmbeddedServer) -> Iterator[EmbeddedServer]:
    """Slot 0 holds Mira's prompt."""
    reset(fault_llama)

    async def fill() -> None:
        async with LlamaClient(fault_llama.url) as client:
            await client.completion(prompt_for("Mira", 300), n_predict=1, id_slot=0)

    asyncio.run(fill())
    yield fault_llama


async def tokens_of(server: EmbeddedServer, slot: int) -> list[int]:
    assert server.save_dir is not None
    async with LlamaClient(server.url) as client:
        return await slot_tokens(client, slot, server.save_dir)


@pytest.fixture
def read_only_state(tmp_path: Path) -> Iterator[Path]:
    """A state directory holding a slot book, which kvtui cannot write."""
    state = tmp_path / "state"
    state.mkdir()
    book = SlotBook(2)
    book.assign(0, "Forest Party", "Mira")
    text = book.to_json()
    mounted = False
    if sys.platform == "linux" and os.geteuid() == 0 and shutil.which("mount"):
        ok = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(state)],
            capture_output=True,
            check=False,
        )
        if ok.returncode == 0:
            (state / "slots.json").write_text(text)
            subprocess.run(["mount", "-o", "remount,ro", str(state)], check=True)
            mounted = True
    if not mounted:
        if os.geteuid() == 0:
            pytest.skip("root cannot mount here, and root writes any directory")
        (state / "slots.json").write_text(text)
        # A directory the user does not own cannot be made writable by kvtui's chmod.
        pytest.skip("needs a read-only mount (root) to make a state directory read-only")
    try:
        yield state
    finally:
        subprocess.run(["umount", str(state)], check=False, capture_output=True)


@pytest.mark.parametrize("command", ["save", "erase"])
async def test_a_read_only_state_directory_is_said(
    warm: EmbeddedServer, read_only_state: Path, command: str
) -> None:
    async with fault_case(f"kvtui {command} with a read-only state directory") as case:
        before = saves_of(warm.save_dir)  # type: ignore[arg-type]
        args = ["save", "0", "--chat", "Forest Party", "--character", "Mira"]
        args = args if command == "save" else ["erase", "0"]
        proc = await asyncio.to_thread(kvtui, warm, read_only_state, *args)
        case.tracebacks = int("Traceback" in proc.stderr)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        line = one_clear_line(proc)
        assert "slot book could not be written" in line and "--state-dir" in line, line
        after = saves_of(warm.save_dir)  # type: ignore[arg-type]
        case.lost = len([n for n in before if n not in after])
        if command == "save":
            assert len(after) == len(before) + 1  # the save itself is on disk


@pytest.fixture
def unreadable_saves(warm: EmbeddedServer) -> Iterator[EmbeddedServer]:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        TALLY.not_tried.append("unreadable save directory (root without setpriv)")
        pytest.skip("root reads any directory, and setpriv is missing to run as a plain user")
    assert warm.save_dir is not None
    os.chmod(warm.save_dir, 0)
    try:
        yield warm
    finally:
        os.chmod(warm.save_dir, 0o755)


@pytest.mark.parametrize(
    "args",
    [
        ["ls"],
        ["save", "0", "--chat", "Forest Party", "--character", "Mira"],
        ["load", "Forest_Party_20260101000000_character_Mira.bin", "--slot", "0"],
        ["doctor"],
    ],
    ids=["ls", "save", "load", "doctor"],
)
async def test_an_unreadable_save_directory_is_said(
    unreadable_saves: EmbeddedServer, tmp_path: Path, args: list[str]
) -> None:
    server = unreadable_saves
    assert server.save_dir is not None
    os.chmod(server.save_dir, 0o755)
    held = await tokens_of(server, 0)
    os.chmod(server.save_dir, 0)
    async with fault_case(f"kvtui {args[0]} with an unreadable save directory") as case:
        proc = await asyncio.to_thread(kvtui, server, tmp_path / "state", *args, plain=True)
        case.tracebacks = int("Traceback" in proc.stderr)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        if args[0] == "doctor":
            assert "save directory" in proc.stdout and "cannot be read" in proc.stdout
        else:
            line = one_clear_line(proc)
            assert "save directory" in line and "--save-dir" in line, line
        os.chmod(server.save_dir, 0o755)
        case.wiped = int(await tokens_of(server, 0) != held)


@pytest.mark.parametrize("args", [["slots"], ["slots", "--json"], ["ls"]])
async def test_a_closed_pipe_is_one_line(
    warm: EmbeddedServer, tmp_path: Path, args: list[str]
) -> None:
    """``kvtui slots | head``: the reader is gone before kvtui writes (deterministic)."""
    async with fault_case(f"kvtui {' '.join(args)} | head (broken pipe)") as case:
        read_end, write_end = os.pipe()
        os.close(read_end)
        try:
            proc = await asyncio.to_thread(kvtui, warm, tmp_path / "state", *args, stdout=write_end)
        finally:
            os.close(write_end)
        case.tracebacks = int("Traceback" in proc.stderr)
        assert proc.returncode == 1
        assert "broken pipe" in one_clear_line(proc)
