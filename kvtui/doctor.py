"""``kvtui doctor``: check that llama-server is set up the way per-character caches need.

Each check names the exact problem and the exact fix: no server at the URL, the model still
loading, ``/slots`` disabled, no ``--slot-save-path``, a save directory that is not the server's
(proved by a probe save under a private name that is always removed), an unreadable save
directory, one slot only, and slots that share one unified KV cache (idle slots are
wiped when another starts — proved by a short test on two empty slots, never on a slot in use).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

from kvtui.llama import (
    LlamaClient,
    LlamaError,
    ModelLoading,
    ServerUnreachable,
    SlotActionsDisabled,
    SlotsEndpointDisabled,
)
from kvtui.llama.errors import START_HINT
from kvtui.llama.models import Props, SlotState
from kvtui.settings import Settings
from kvtui.store.names import private_name
from kvtui.store.saving import PROBE


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}


async def run_doctor(settings: Settings, client: LlamaClient | None = None) -> list[Check]:
    """Run every check in order; later checks are skipped when an earlier one makes them moot."""
    own = client is None
    client = client or LlamaClient(
        settings.server_url, api_key=settings.api_key, save_dir=settings.save_dir
    )
    try:
        return await _run(settings, client)
    finally:
        if own:
            await client.aclose()


async def _run(settings: Settings, client: LlamaClient) -> list[Check]:
    checks: list[Check] = []
    url = settings.server_url
    try:
        health = await client.health()
    except ServerUnreachable as err:
        checks.append(
            Check(
                "server",
                Status.FAIL,
                f"No llama-server answers at {url}: {err.message}",
                f"Start it ({START_HINT}) or point kvtui at it with --server URL.",
            )
        )
        return checks
    except LlamaError as err:
        checks.append(Check("server", Status.FAIL, f"{url}: {err}", err.hint))
        return checks
    checks.append(Check("server", Status.OK, f"llama-server answers at {url}."))
    if health == "loading":
        checks.append(
            Check(
                "model",
                Status.WARN,
                "The server is still loading its model.",
                "Wait until loading finishes, then run kvtui doctor again.",
            )
        )
        return checks
    try:
        props = await client.props()
    except ModelLoading:
        checks.append(Check("model", Status.WARN, "The model is still loading.", "Wait."))
        return checks
    except LlamaError as err:
        checks.append(Check("model", Status.FAIL, str(err), err.hint))
        return checks
    checks.append(
        Check("model", Status.OK, f"Model {props.model} loaded (build {props.build_info}).")
    )
    try:
        slots = await client.slots()
    except SlotsEndpointDisabled as err:
        checks.append(
            Check("slots endpoint", Status.FAIL, err.message, "Restart llama-server with --slots.")
        )
        return checks
    except LlamaError as err:
        checks.append(Check("slots endpoint", Status.FAIL, str(err), err.hint))
        return checks
    checks.append(Check("slots endpoint", Status.OK, "/slots answers."))
    checks.append(_slot_count(props))
    checks.append(await _probe_save_dir(settings, client, slots))
    checks.append(await _unified_kv(client, props, slots))
    return checks


def _slot_count(props: Props) -> Check:
    detail = f"{props.total_slots} slot(s) of {props.n_ctx} tokens each."
    if props.total_slots < 2:
        return Check(
            "slots",
            Status.WARN,
            detail + " With one slot every character switch reprocesses the prompt.",
            "Start llama-server with -np N (one slot per character you want kept warm) and "
            "-c N×(tokens per character).",
        )
    return Check("slots", Status.OK, detail)


def _idle_slot(slots: list[SlotState]) -> SlotState | None:
    idle = [s for s in slots if not s.is_processing]
    # Prefer a slot that holds nothing, so the probe never writes a user's cache to disk.
    idle.sort(key=lambda s: (s.n_prompt_tokens or 0, s.id))
    return idle[0] if idle else None


def _dir_problem(save_dir: Path) -> str | None:
    """Why kvtui cannot use ``save_dir`` (None when it can list and write it)."""
    if not save_dir.exists():
        return f"{save_dir} does not exist"
    if not save_dir.is_dir():
        return f"{save_dir} is not a directory"
    try:
        with os.scandir(save_dir) as it:
            next(it, None)
    except OSError as err:
        return f"{save_dir} cannot be read ({err.strerror or err})"
    if not os.access(save_dir, os.W_OK | os.X_OK):
        return f"{save_dir} is not writable for kvtui (sidecars and renames need it)"
    return None


async def _probe_save_dir(settings: Settings, client: LlamaClient, slots: list[SlotState]) -> Check:
    """Save an idle slot under a private name and look for the file in the configured directory.

    The probe file is private (``.kvtui-probe-*``: never listed or loaded) and removed in any
    case; when kvtui does not know the directory, the store's repair removes it the next time
    kvtui opens that directory.
    """
    save_dir = settings.save_dir
    if save_dir is not None and (problem := _dir_problem(save_dir)) is not None:
        return Check(
            "save directory",
            Status.FAIL,
            f"The save directory is unusable: {problem}.",
            "Fix its permissions, or give kvtui the server's --slot-save-path with --save-dir DIR.",
        )
    slot = _idle_slot(slots)
    if slot is None:
        return Check(
            "save directory", Status.SKIP, "Every slot is busy; the probe save was not tried."
        )
    name = private_name(PROBE)
    probe = save_dir / name if save_dir is not None else None
    try:
        await client.save(slot.id, name)
        found = probe is not None and probe.is_file()
    except SlotActionsDisabled:
        return Check(
            "save directory",
            Status.FAIL,
            "The server was started without --slot-save-path: it cannot save or restore slots.",
            "Restart llama-server with --slot-save-path DIR, and give kvtui the same "
            "directory with --save-dir DIR.",
        )
    except LlamaError as err:
        return Check("save directory", Status.FAIL, f"The probe save failed: {err}", err.hint)
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)
    if save_dir is None:
        return Check(
            "save directory",
            Status.WARN,
            "The server saves slots, but kvtui was given no save directory, so it cannot list, "
            f"check or rotate saves (the hidden probe file {name} is removed the next time kvtui "
            "opens the server's directory).",
            "Pass the server's --slot-save-path directory with --save-dir DIR.",
        )
    if not found:
        return Check(
            "save directory",
            Status.FAIL,
            f"{save_dir} is not the server's --slot-save-path: a probe save ({name}) did not "
            "appear there.",
            f"Give kvtui the directory llama-server was started with (--slot-save-path), or "
            f"restart llama-server with --slot-save-path {save_dir}. The hidden file {name} in "
            "the server's directory can be deleted.",
        )
    return Check(
        "save directory", Status.OK, f"{save_dir} is the server's --slot-save-path (probe saved)."
    )


async def _unified_kv(client: LlamaClient, props: Props, slots: list[SlotState]) -> Check:
    """Fill one empty slot, run a token on another, and see whether the first kept its cache."""
    name = "unified KV"
    if props.total_slots < 2:
        return Check(name, Status.SKIP, "One slot only: nothing to share.")
    empty = [s for s in slots if not s.is_processing and not s.n_prompt_tokens]
    if len(empty) < 2:
        return Check(
            name,
            Status.SKIP,
            "Fewer than two empty slots; the test would disturb a cache in use.",
            "Run kvtui doctor while at least two slots are empty.",
        )
    a, b = empty[0].id, empty[1].id
    try:
        await client.completion(list(range(65, 97)), n_predict=1, id_slot=a)
        await client.completion(list(range(97, 105)), n_predict=1, id_slot=b)
        after = {s.id: s for s in await client.slots()}
    except LlamaError as err:
        return Check(name, Status.SKIP, f"The test could not run: {err}")
    finally:
        for slot in (a, b):
            try:
                await client.erase(slot)
            except LlamaError:
                pass
    kept = after.get(a)
    if kept is not None and (kept.n_prompt_tokens or 0) > 0:
        return Check(name, Status.OK, "Each slot keeps its own cache while another works.")
    return Check(
        name,
        Status.FAIL,
        "The slots share one unified KV cache: an idle slot was wiped when another slot "
        "started. Per-character slots cannot stay warm.",
        "Restart llama-server with an explicit -np N and --no-kv-unified "
        "(or --no-cache-idle-slots).",
    )


def worst(checks: list[Check]) -> Status:
    order = [Status.OK, Status.SKIP, Status.WARN, Status.FAIL]
    return max((c.status for c in checks), key=order.index, default=Status.OK)
