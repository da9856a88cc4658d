"""Verified saves and crash repair: a save's final name never exists incomplete.

:func:`save_verified` has llama-server write a private name (``private_name("saving")``), checks
the file (its size equals the server's ``n_written``, ``n_saved`` is above the minimum, its
header holds ``n_saved`` tokens), writes the sidecar of the final name (atomically), then moves
the file to its final name without ever replacing an existing file, and makes it ``0600``. On any
failure — HTTP 500 for a full disk, a killed server, a size mismatch, a full disk during the
sidecar write — the private file is removed and no other save is touched.

:func:`repair` cleans up after a crash: leftover in-flight and probe files and orphaned sidecars
are removed, sound saves of kvtui's own naming that lost their sidecar get one back (from their
name and header), and damaged files are reported (once each, never listed, never deleted).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol

from kvtui.fingerprint import PromptFingerprint
from kvtui.store.entries import SaveEntry, SaveMeta, is_valid_save
from kvtui.store.errors import SaveIncomplete, SaveRefused, SaveWriteFailed
from kvtui.store.extension import could_be_extension_name
from kvtui.store.names import (
    BIN_SUFFIX,
    PRIVATE_PREFIX,
    check_filename,
    normalize,
    parse_save_name,
    private_name,
)
from kvtui.store.slotfile import SlotFileError, read_header

if TYPE_CHECKING:
    from kvtui.llama.models import SaveResult
    from kvtui.store.store import SaveStore

SAVING = "saving"
PROBE = "probe"
REPAIRED_PURPOSES = (SAVING, PROBE)
"""Private files that are always leftovers once no save is in flight (others belong to jobs)."""
_SIDECAR = ".json"
_ADOPT_WINDOW = timedelta(minutes=10)


class SlotSaver(Protocol):
    """What ``save_verified`` needs of a client (``kvtui.llama.LlamaClient`` is one)."""

    async def save(self, slot: int, filename: str) -> SaveResult: ...


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError, IsADirectoryError, PermissionError):
        os.unlink(path)


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _place(tmp: str, final: str) -> None:
    """Move ``tmp`` to ``final`` without ever replacing a file that is already there."""
    try:
        os.link(tmp, final)  # fails with EEXIST instead of replacing
    except FileExistsError:
        raise
    except OSError:  # no hard links here (FAT, some network shares): check, then rename
        if os.path.lexists(final):
            raise FileExistsError(errno.EEXIST, "File exists", final) from None
        os.replace(tmp, final)
        return
    os.unlink(tmp)


def _verify(store: SaveStore, tmp: str, result: SaveResult, min_tokens: int, min_bytes: int) -> str:
    """Why the server's file is not a complete save (or ``""``)."""
    try:
        st = os.lstat(os.path.join(store.directory, tmp))
    except OSError:
        st = None
    on_disk = st.st_size if st is not None and stat.S_ISREG(st.st_mode) else -1
    if result.n_saved == 0:
        return "the slot is empty"
    if result.n_written == 0 or on_disk != result.n_written:
        return (
            f"llama-server could not write the file ({result.n_written:,} bytes reported, "
            f"{max(on_disk, 0):,} on disk): is its disk full?"
        )
    if not is_valid_save(
        result.n_saved, result.n_written, min_tokens=max(1, min_tokens), min_bytes=min_bytes
    ):
        return f"{result.n_saved} tokens / {result.n_written:,} bytes is below the minimum"
    try:
        header = read_header(store.directory / tmp)
    except SlotFileError as err:
        return f"the file the server wrote is not a slot save: {err}"
    if header.n_tokens != result.n_saved:
        return f"the file holds {header.n_tokens} tokens, not the {result.n_saved} reported"
    return ""


def _same_save(store: SaveStore, tmp: str, previous: str) -> SaveEntry | None:
    """The entry of ``previous`` when it is sound and byte-identical to the new file ``tmp``."""
    entry = store.get(previous)
    if entry is None or entry.problem is not None:
        return None
    try:
        if os.path.getsize(store.directory / tmp) != entry.size:
            return None
        with (
            open(store.directory / tmp, "rb") as new,
            open(store.directory / previous, "rb") as old,
        ):
            while True:
                a, b = new.read(1 << 20), old.read(1 << 20)
                if a != b:
                    return None
                if not a:
                    return entry
    except OSError:
        return None


async def save_verified(
    store: SaveStore,
    client: SlotSaver,
    slot: int,
    final_name: str,
    meta: SaveMeta,
    *,
    min_tokens: int = 1,
    min_bytes: int = 0,
    unless_same_as: str | None = None,
) -> SaveEntry:
    """Save ``slot`` as ``final_name`` (e.g. from ``store.new_filename``); returns its entry.

    With ``unless_same_as`` (the character's last save), a save byte-identical to that sound
    file is not written again: the new file is dropped and that file's entry returned (the
    caller sees ``entry.filename != final_name``).

    ``meta`` is the sidecar; its ``n_saved``/``n_written`` are filled in from the server's
    answer. Raises ``SaveRefused`` when ``final_name`` already exists (tagged saves are never
    overwritten), ``SaveIncomplete`` when the server's file fails verification,
    ``SaveWriteFailed`` when the sidecar or the rename cannot be written, and the client's
    ``LlamaError`` when the server fails; in every case nothing but the private file changed.
    """
    check_filename(final_name)
    directory = str(store.directory)
    final = os.path.join(directory, final_name)
    if os.path.lexists(final):  # noqa: ASYNC240 - one lstat, before any waiting
        raise SaveRefused(
            f"{final_name} already exists in {directory}; kvtui never overwrites a save. "
            "Save again (a new name is chosen) or delete that file first."
        )
    tmp = private_name(SAVING)
    tmp_path = os.path.join(directory, tmp)
    store._inflight.add(tmp)
    placed = sidecar_written = False
    try:
        result = await client.save(slot, tmp)
        problem = _verify(store, tmp, result, min_tokens, min_bytes)
        if problem:
            raise SaveIncomplete(f"Save of slot {slot} discarded: {problem}.")
        if unless_same_as is not None and (same := _same_save(store, tmp, unless_same_as)):
            with store._lock:
                store._recent[(same.chat_key, same.character_key)] = same.filename
            return same
        with contextlib.suppress(OSError):  # the server may run as another user
            os.chmod(tmp_path, 0o600)
        fingerprint: object = meta.fingerprint
        if isinstance(fingerprint, PromptFingerprint):  # model_copy(update=...) skips validation
            fingerprint = fingerprint.to_json()
        full = meta.model_copy(
            update={
                "n_saved": result.n_saved,
                "n_written": result.n_written,
                "fingerprint": fingerprint,
            }
        )
        store.write_meta(final_name, full)  # SaveWriteFailed when the disk is full
        sidecar_written = True
        try:
            _place(tmp_path, final)
        except FileExistsError as err:
            raise SaveRefused(
                f"{final_name} appeared in {directory} while saving; kvtui never overwrites a "
                "save. Save again."
            ) from err
        except OSError as err:
            raise SaveWriteFailed(
                f"Could not rename the new save to {final_name} in {directory} "
                f"({err.strerror or type(err).__name__}). Check the directory is writable and "
                "save again."
            ) from err
        placed = True
        _fsync_dir(directory)
    finally:
        store._inflight.discard(tmp)
        _remove(tmp_path)
        if sidecar_written and not placed:
            _remove(final + _SIDECAR)
        store._refresh(final_name)
    entry = store.get(final_name)
    if entry is None or entry.problem is not None:  # changed behind kvtui's back at once
        raise SaveIncomplete(f"Save of slot {slot} to {final_name} vanished or changed at once.")
    return entry


def meta_from_name(filename: str) -> SaveMeta:
    """A sidecar for a save whose name is all kvtui knows (a client's ``action=save`` through
    the proxy): the names read back from the file name where it has them."""
    parsed = parse_save_name(filename)
    if parsed is None or parsed.legacy:
        return SaveMeta(chat="", character=filename[: -len(BIN_SUFFIX)])
    tag = None if parsed.tag is None else (_raw_component(parsed.tag) or parsed.tag)
    return SaveMeta(
        chat=_raw_component(parsed.chat) or parsed.chat,
        character=_raw_component(parsed.character) or parsed.character,
        tag=tag,
    )


# -- repair --------------------------------------------------------------------------------


def _private_purpose(name: str) -> str | None:
    if not name.startswith(PRIVATE_PREFIX):
        return None
    return name[len(PRIVATE_PREFIX) :].split("-", 1)[0]


def _raw_component(component: str) -> str | None:
    """The raw text a kvtui name component was made from, when it can be read back."""
    raw = component.replace("_", " ")
    return raw if normalize(raw) == component else None


def _is_kvtui_name(name: str, mtime: float, stamp: datetime) -> bool:
    """Whether a sidecar-less name is kvtui's own: a charset the extension never writes, or a
    UTC stamp matching the file's time where local time would not (kvtui names use UTC)."""
    if not could_be_extension_name(name[: -len(BIN_SUFFIX)]):
        return True
    written = datetime.fromtimestamp(mtime, UTC)
    offset = datetime.now().astimezone().utcoffset() or timedelta(0)
    return offset != timedelta(0) and timedelta(0) <= written - stamp <= _ADOPT_WINDOW


def _adopt(store: SaveStore, entry: SaveEntry, mtime: float) -> str | None:
    parsed = parse_save_name(entry.filename)
    if parsed is None or parsed.legacy or entry.n_tokens is None:
        return None
    if not _is_kvtui_name(entry.filename, mtime, parsed.timestamp):
        return None
    chat, character = _raw_component(parsed.chat), _raw_component(parsed.character)
    tag = _raw_component(parsed.tag) if parsed.tag is not None else None
    if chat is None or character is None or (parsed.tag is not None and tag is None):
        return None
    meta = SaveMeta(
        chat=chat,
        character=character,
        tag=tag,
        n_saved=entry.n_tokens,
        n_written=entry.size,
        saved_at=parsed.timestamp,
        adopted=True,
    )
    try:
        store.write_meta(entry.filename, meta)
    except SaveWriteFailed as err:
        return f"Could not adopt {entry.filename}: {err}"
    return (
        f"Adopted {entry.filename} ({entry.n_tokens} tokens), a save that had lost its sidecar "
        "in a crash."
    )


def repair(store: SaveStore) -> list[str]:
    """Clean up the save directory after a crash; returns one note per thing done or found.

    * in-flight saves (``.kvtui-saving-*``) and doctor probes (``.kvtui-probe-*``) that no
      running save owns are removed, with leftover atomic-write temp files;
    * sidecars whose save is gone are removed;
    * sound, sidecar-less saves of kvtui's own naming get a sidecar from their name and header;
    * damaged files (cut short, empty, not a slot file) are reported — once per file version.

    Other private files (memory jobs' parking) are left to their owners. Symlinks are never
    followed or touched. Raises ``SaveDirUnreadable`` when the directory cannot be listed.
    """
    notes: list[str] = []
    directory = store.directory
    leftovers = 0
    try:
        items = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return notes
    except OSError:
        store.rescan()  # raises SaveDirUnreadable with the standard message
        return notes
    names = {item.name for item in items}
    for item in items:
        name = item.name
        if item.is_symlink() or not item.is_file(follow_symlinks=False):
            continue
        purpose = _private_purpose(name)
        base = name[: -len(_SIDECAR)] if name.endswith(_SIDECAR) else name
        if purpose in REPAIRED_PURPOSES and base not in store._inflight:
            _remove(item.path)
            leftovers += 1
        elif name.startswith(".") and name.endswith(".tmp") and BIN_SUFFIX + _SIDECAR in name:
            _remove(item.path)  # write_atomic's temp file of a sidecar, left by a crash
            leftovers += 1
        elif purpose is None and name.endswith(BIN_SUFFIX + _SIDECAR) and base not in names:
            _remove(item.path)
            notes.append(f"Removed {name}: the save it described is gone.")
    if leftovers:
        notes.append(f"Removed {leftovers} incomplete file(s) left by an interrupted save.")
    store.rescan()
    for entry in store.entries(include_damaged=True):
        try:
            st = os.lstat(directory / entry.filename)
        except OSError:
            continue
        key = (entry.filename, st.st_size, st.st_mtime_ns)
        if entry.problem is not None:
            if key not in store._reported:
                store._reported.add(key)
                notes.append(
                    f"{entry.filename} cannot be loaded ({entry.problem}); it is left in place "
                    "but not offered. Delete it if you do not need it."
                )
        elif entry.meta is None and entry.parsed and not entry.from_extension:
            note = _adopt(store, entry, st.st_mtime)
            if note is not None:
                notes.append(note)
    return notes
