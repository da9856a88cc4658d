"""Is llama-server keeping evicted prompts in host memory (``--cache-ram``), and how much?

llama-server reports its prompt cache nowhere in its API: not in ``/props``, ``/slots`` or
``/metrics`` (checked on xllamacpp 2026.10 and the upstream source). Its startup log says
``prompt cache is enabled, size limit: N MiB`` (upstream builds; the embedded xllamacpp build logs
it below its default verbosity). So kvtui tells in two ways:

1. **Behaviour (a probe)**, which works for any server, local or not: in a slot nobody uses,
   prefill a short unique prompt A, then a different prompt B in the same slot (a server with the
   cache moves A's state to host memory), then A again: ``cache_n`` close to A's length means
   the server brought A back from memory; ``cache_n`` ≤ 1 means it has no such cache. The slot
   is erased afterwards. Three short prefills (about 100 tokens on a real model's tokenizer).
2. **Size**, from where it can be read: the server's command line and environment when it runs
   on this machine (``--cache-ram N`` / ``-cram N`` / ``LLAMA_ARG_CACHE_RAM``, or the embedded
   launcher's parameters), else its startup log when given, else the build default (8192 MiB,
   marked as assumed). ``-1`` means no size limit.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kvtui.llama import LlamaClient, LlamaError

DEFAULT_CACHE_RAM_MIB = 8192
_LOG_ON = re.compile(r"prompt cache is enabled, size limit: (no limit|(\d+) MiB)")
_LOG_OFF = re.compile(r"prompt cache is disabled")
_WORDS = (
    "amber", "birch", "cedar", "delta", "ember", "fjord", "garnet", "harbor", "indigo", "juniper",
    "kestrel", "lantern", "meadow", "nimbus", "orchid", "pebble", "quartz", "raven", "saffron",
    "thistle", "umber", "violet", "willow", "xenon", "yarrow", "zephyr",
)  # fmt: skip


@dataclass(frozen=True)
class RamCacheInfo:
    """What kvtui knows of the server's host-memory prompt cache.

    ``enabled`` is ``None`` when it could not be told. ``size_mib`` is ``-1`` for no limit,
    ``None`` when unknown; ``size_source`` says where the size came from ("command line",
    "environment", "embedded launcher", "log", "assumed default"). ``probe_cache_n`` /
    ``probe_tokens`` are the probe's figures when it ran.
    """

    enabled: bool | None
    size_mib: int | None
    size_source: str | None
    detail: str
    probe_cache_n: int | None = None
    probe_tokens: int | None = None

    def capacity_tokens(self, bytes_per_token: float, n_ctx_total: int) -> int | None:
        """Tokens the cache can hold: its MiB limit over the state size per token, never less
        than the server's total context (llama-server's token limit); ``None`` when unlimited."""
        if not self.enabled:
            return 0
        if self.size_mib is None or self.size_mib < 0 or bytes_per_token <= 0:
            return None
        return max(n_ctx_total, int(self.size_mib * 1024 * 1024 / bytes_per_token))


def _probe_text(nonce: str, words: int = 40) -> str:
    rng = int.from_bytes(bytes.fromhex(nonce), "big")
    out = [f"kvtui cache probe {nonce}:"]
    for _ in range(words):
        out.append(_WORDS[rng % len(_WORDS)])
        rng = rng // len(_WORDS) or int.from_bytes(secrets.token_bytes(8), "big")
    return " ".join(out) + "."


async def _free_slot(client: LlamaClient, avoid: Collection[int]) -> int | None:
    """The highest idle slot that holds nothing and is not in ``avoid``, or ``None``."""
    try:
        slots = await client.slots()
    except LlamaError:
        return None
    for slot in reversed(slots):
        if slot.id not in avoid and not slot.is_processing and not slot.n_prompt_tokens:
            return slot.id
    return None


async def probe_ram_cache(client: LlamaClient, slot: int) -> tuple[bool, int, int]:
    """Run the probe in ``slot`` (which must be free: it is erased afterwards).

    Returns ``(enabled, cache_n of the repeat, tokens of the probe prompt)``.
    """
    first = _probe_text(secrets.token_hex(8))
    other = _probe_text(secrets.token_hex(8))
    try:
        a = await client.completion(first, n_predict=1, id_slot=slot, temperature=0.0)
        await client.completion(other, n_predict=1, id_slot=slot, temperature=0.0)
        again = await client.completion(first, n_predict=1, id_slot=slot, temperature=0.0)
    finally:
        with contextlib.suppress(LlamaError):
            await client.erase(slot)
    tokens = a.timings.prompt_n + a.timings.cache_n
    cached = again.timings.cache_n
    return cached >= max(2, tokens // 2), cached, tokens


def size_from_args(argv: Sequence[str], environ: dict[str, str] | None = None) -> tuple[int, str]:
    """``--cache-ram`` from a llama-server command line (or the embedded launcher's JSON), else
    ``LLAMA_ARG_CACHE_RAM``, else the default. Returns ``(MiB, source)``."""
    args = list(argv)
    for i, arg in enumerate(args):
        for flag in ("--cache-ram", "-cram"):
            if arg == flag and i + 1 < len(args):
                with contextlib.suppress(ValueError):
                    return int(args[i + 1]), "command line"
            if arg.startswith(flag + "="):
                with contextlib.suppress(ValueError):
                    return int(arg.split("=", 1)[1]), "command line"
    if "kvtui.embedded.xllama" in args and args[-1].startswith("{"):
        with contextlib.suppress(ValueError, AttributeError):
            value = json.loads(args[-1]).get("cache_ram_mib")
            return (int(value) if value is not None else DEFAULT_CACHE_RAM_MIB), "embedded launcher"
    if environ and "LLAMA_ARG_CACHE_RAM" in environ:
        with contextlib.suppress(ValueError):
            return int(environ["LLAMA_ARG_CACHE_RAM"]), "environment"
    return DEFAULT_CACHE_RAM_MIB, "assumed default"


def size_from_log(text: str) -> int | None:
    """The size the server logged at startup (-1: no limit, 0: disabled), or ``None``."""
    found = _LOG_ON.findall(text)
    if found:
        limit, mib = found[-1]
        return -1 if limit == "no limit" else int(mib)
    return 0 if _LOG_OFF.search(text) else None


def local_server_process(url: str) -> tuple[list[str], dict[str, str]] | None:
    """Command line and environment of the process listening on ``url``'s port, when that is a
    loopback address on this (Linux) machine and the process is readable; else ``None``."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") or parts.port is None:
        return None
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A":  # LISTEN
                    if int(fields[1].rsplit(":", 1)[1], 16) == parts.port:
                        inodes.add(fields[9])
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(fd) in targets:
                    return _read_process(proc)
    return None


def _read_process(proc: Path) -> tuple[list[str], dict[str, str]] | None:
    try:
        argv = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    env: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for item in (proc / "environ").read_bytes().split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep:
                env[key.decode(errors="replace")] = value.decode(errors="replace")
    return [a.decode(errors="replace") for a in argv if a], env


async def detect_ram_cache(
    client: LlamaClient,
    *,
    slot: int | None = None,
    probe: bool = True,
    log_text: str | None = None,
    avoid: Collection[int] = (),
) -> RamCacheInfo:
    """Tell whether the server keeps evicted prompts in host memory, and its size.

    The probe runs in ``slot`` (default: the highest slot that looks free and is not in
    ``avoid``; with none it is skipped and the answer rests on the command line or log). A
    restore into a never-used slot does not show in ``/slots``, so pass the slots kvtui's book
    holds as ``avoid`` (or run this before any restore). Never raises for a server that answers.
    """
    size: int | None = None
    source: str | None = None
    process = local_server_process(client.base_url)
    if process is not None:
        size, source = size_from_args(*process)
    if (source is None or source == "assumed default") and log_text:
        logged = size_from_log(log_text)
        if logged is not None:
            size, source = logged, "log"
    if size is None:
        size, source = DEFAULT_CACHE_RAM_MIB, "assumed default"
    if probe:
        target = slot if slot is not None else await _free_slot(client, avoid)
        if target is not None:
            try:
                on, cached, tokens = await probe_ram_cache(client, target)
            except LlamaError as err:
                return RamCacheInfo(None, size, source, f"probe failed: {err}")
            detail = (
                f"probe in slot {target}: a {tokens}-token prompt came back with {cached} "
                f"tokens cached after another prompt took the slot"
            )
            if on and size == 0:
                size, source = DEFAULT_CACHE_RAM_MIB, "assumed default"
            return RamCacheInfo(on, size if on else 0, source, detail, cached, tokens)
    if source in ("command line", "environment", "embedded launcher", "log"):
        return RamCacheInfo(size != 0, size, source, f"--cache-ram {size} ({source}); no probe")
    return RamCacheInfo(None, size, source, "no free slot to probe and no command line to read")
