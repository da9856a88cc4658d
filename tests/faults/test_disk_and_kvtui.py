"""A full disk under the save directory, and ``kill -9`` of kvtui itself during an autosave.

The full disk is a tiny tmpfs mounted over the fault server's save directory (root on Linux);
where the machine refuses, the sidecar's ``ENOSPC`` is simulated instead and the real one is
reported as not tried. The kvtui that is killed is a real ``kvtui proxy`` process, autosaving
after every message; it is killed the moment its in-flight private save file exists.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from kvtui.embedded.server import EmbeddedServer, free_port
from kvtui.errors import KvtuiError
from kvtui.service import KvService
from kvtui.settings import Settings
from kvtui.slots import SlotBook
from kvtui.store.names import private_name
from tests.faults.conftest import SLOT_CTX, TALLY, fault_case
from tests.faults.helpers import (
    CHAT,
    audit,
    common_prefix,
    prompt_for,
    reset,
    restores_own_cache,
    saves_of,
    slot_tokens,
    wait_until,
    warm_and_save,
    wiped_by_mistake,
)
from tests.test_proxy import st_body

pytestmark = pytest.mark.server


def _mount_tmpfs(path: Path, size: str) -> bool:
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@pytest.fixture
def tiny_disk(fault_llama: EmbeddedServer) -> Iterator[bool]:
    """The fault server's save directory on an 8 MB tmpfs (True), or as it is (False)."""
    reset(fault_llama)
    assert fault_llama.save_dir is not None
    mounted = _mount_tmpfs(fault_llama.save_dir, "8m")
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(fault_llama.save_dir)], check=False)


def fill_disk(directory: Path, leave: int) -> Path:
    """A filler file leaving about ``leave`` bytes free on the tmpfs."""
    st = os.statvfs(directory)
    filler = directory / "filler.dat"
    with open(filler, "wb") as fh:
        left = max(0, st.f_bavail * st.f_frsize - leave)
        while left > 0:
            step = min(left, 1 << 20)
            fh.write(b"\0" * step)
            left -= step
    return filler


@pytest.fixture
async def service(fault_llama: EmbeddedServer, tmp_path: Path) -> AsyncIterator[KvService]:
    settings = Settings(
        server_url=fault_llama.url, save_dir=fault_llama.save_dir, state_dir=tmp_path / "state"
    )
    async with KvService(settings) as svc:
        await svc.connect()
        yield svc


@pytest.mark.parametrize("where", ["server", "sidecar"])
async def test_a_full_disk_fails_the_save_and_keeps_everything(
    tiny_disk: bool,
    service: KvService,
    fault_llama: EmbeddedServer,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    name = "full disk while the server writes" if where == "server" else "full disk at the sidecar"
    if not tiny_disk and where == "server":
        TALLY.not_tried.append("a real full disk (no tmpfs here)")
        pytest.skip("cannot mount a tmpfs here; the sidecar's ENOSPC is simulated instead")
    async with fault_case(name if tiny_disk else f"{name} (simulated ENOSPC)") as case:
        save_dir = service.require_store().directory
        expected = {
            "Mira": await warm_and_save(service, "Mira", 400),
            "Kael": await warm_and_save(service, "Kael", 300),
        }
        before = saves_of(save_dir)
        slot = service.resident_slot(CHAT, "Mira")
        assert slot is not None
        more = prompt_for("Mira", 3000 if where == "server" else 600)
        await service.complete(more, slot=slot)
        expected["Mira"] = common_prefix(
            expected["Mira"], await service.tokenize(more, add_special=True)
        )
        filler = None
        if tiny_disk:
            if where == "server":
                leave = 128 * 1024  # far less than the 1.6 MB save
            else:  # room for the server's file, none for the sidecar
                probe = private_name("probe")
                size = (await service.client.save(slot, probe)).n_written
                (save_dir / probe).unlink()
                leave = -(-size // 4096) * 4096
            filler = await asyncio.to_thread(fill_disk, save_dir, leave)
        else:
            import kvtui.store.store as store_module

            def no_space(*_: object, **__: object) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(store_module, "write_atomic", no_space)
        try:
            with pytest.raises(KvtuiError) as caught:
                await service.save_slot(slot)
            message = str(caught.value)
            assert "\n" not in message, message
            if where == "sidecar":
                assert ".bin.json" in message and "space" in message, message
        finally:
            if filler is not None:
                filler.unlink()
            monkeypatch.undo()
        case.lost = audit(save_dir, before, n_ctx=SLOT_CTX)
        case.wiped = await wiped_by_mistake(service, save_dir, expected)
        case.lost += await restores_own_cache(service, save_dir, expected)
        # With room again, the next save works.
        await service.save_slot(slot)


async def test_kvtui_killed_during_an_autosave(fault_llama: EmbeddedServer, tmp_path: Path) -> None:
    await asyncio.to_thread(reset, fault_llama)
    assert fault_llama.save_dir is not None
    save_dir = fault_llama.save_dir
    state = tmp_path / "state"
    settings = Settings(server_url=fault_llama.url, save_dir=save_dir, state_dir=state)
    async with fault_case("kill -9 kvtui during an autosave") as case:
        async with KvService(settings) as service:
            await service.connect()
            expected = {
                "Mira": await warm_and_save(service, "Mira", 1000),
                "Kael": await warm_and_save(service, "Kael", 600),
            }
        before = saves_of(save_dir)
        config = tmp_path / "config.toml"
        config.write_text("autosave_every = 1\n")
        port = free_port()
        env = dict(os.environ, KVTUI_CONFIG=str(config))
        cmd = [sys.executable, "-m", "kvtui.cli", "proxy", "--listen", f"127.0.0.1:{port}"]
        cmd += ["--server", fault_llama.url, "--save-dir", str(save_dir), "--state-dir", str(state)]
        proc = subprocess.Popen(  # noqa: ASYNC220 - Popen starts it and returns at once
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            big = prompt_for("Mira", 6000)
            body = st_body(big, ["\nAlex:"], n_predict=1)
            headers = {"X-KVTUI-Chat": CHAT, "X-KVTUI-Character": "Mira"}
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=300) as c:
                await _wait_for_proxy(c, proc)
                request = asyncio.create_task(c.post("/completion", json=body, headers=headers))
                seen = await wait_until(
                    lambda: any(n.startswith(".kvtui-saving-") for n in os.listdir(save_dir)),
                    lambda: proc.poll() is not None,
                )
                proc.send_signal(signal.SIGKILL)
                case.killed(seen)
                await asyncio.gather(request, return_exceptions=True)
        finally:
            if proc.poll() is None:
                proc.kill()
            stderr = proc.communicate(timeout=60)[1].decode(errors="replace")
        case.tracebacks = int("Traceback" in stderr)
        expected["Mira"] = common_prefix(
            expected["Mira"], await _tokenize(fault_llama, big)
        )  # the autosave may have completed
        # kvtui starts again: the book it wrote reads back, its repair tidies the orphan.
        assert SlotBook.load(state / "slots.json").find(CHAT, "Kael") is not None
        async with KvService(settings) as service:
            await service.connect()
            await slot_tokens(service.client, 1, save_dir)  # the server's orphaned save is done
            service.repair_saves()
            case.lost = audit(save_dir, before, n_ctx=SLOT_CTX)
            case.wiped = await wiped_by_mistake(service, save_dir, expected)
            case.lost += await restores_own_cache(service, save_dir, expected)


async def _wait_for_proxy(client: httpx.AsyncClient, proc: subprocess.Popen[bytes]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while loop.time() < deadline:
        assert proc.poll() is None, "kvtui proxy exited while starting"
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError("kvtui proxy did not start")


async def _tokenize(server: EmbeddedServer, text: str) -> list[int]:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        resp = await c.post("/tokenize", json={"content": text, "add_special": True})
        tokens: list[int] = resp.json()["tokens"]
        return tokens
