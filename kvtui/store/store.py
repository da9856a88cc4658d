"""The save directory: an index of save files and their sidecars, new names, rotation, watching.

llama-server has no API to list or delete saves, so kvtui reads its ``--slot-save-path`` itself.
Every ``*.bin`` file is listed: names in the seed's format (kvtui's and the KV Cache Manager
extension's) by chat and character, the extension's older ``_slot{N}`` names as ``legacy`` entries
under "slot N", and any other ``.bin`` (say ``persist.bin`` saved by hand) under
``UNPARSED_CHAT`` with its modification time, so it can still be loaded. Rotation and ``latest``
only ever see parsed names of the exact (normalised) chat and character. Hidden files and other
extensions are ignored.

A sidecar ``NAME.bin.json`` (``SaveMeta``) keeps what a name cannot: the raw names, the tag, token
and byte counts, model, context and a prompt fingerprint. Rescans are incremental: a file whose
size and mtime (and its sidecar's) did not change keeps its entry, so only new or changed
sidecars and headers are ever read.

Safety: symlinks are never listed, loaded or followed; private names (``.kvtui-*``) are never
listed; files unfit to restore (``SaveEntry.problem``) are left out of ``entries()``, ``latest``
and rotation, and ``check_restorable`` re-checks a file just before it is sent to the server.
Saves are made by ``save_verified`` (``kvtui.store.saving``): the final name never exists
incomplete.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from kvtui.atomic import write_atomic
from kvtui.store.entries import UNPARSED_CHAT, SaveEntry, SaveMeta, build_entry, is_valid_save
from kvtui.store.errors import SaveDirUnreadable, SaveWriteFailed
from kvtui.store.extension import KnownChats
from kvtui.store.names import (
    BIN_SUFFIX,
    check_filename,
    format_save_name,
    is_private_name,
    normalize,
    parse_save_name,
)
from kvtui.store.slotfile import SlotFileError, SlotFileHeader, read_header, state_is_complete

if TYPE_CHECKING:
    from kvtui.store.saving import SlotSaver

__all__ = ["UNPARSED_CHAT", "SaveEntry", "SaveMeta", "SaveStore", "is_valid_save"]

SIDECAR_SUFFIX = ".json"

_Stamp = tuple[int, int, int, int, int]
_MTIME_SLACK_NS = 2_000_000_000  # coarse file-system clocks (FAT: 2 s)


def _is_regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def _unreadable(directory: Path, err: OSError) -> SaveDirUnreadable:
    reason = err.strerror or type(err).__name__
    return SaveDirUnreadable(
        f"Cannot read the save directory {directory} ({reason}). Check that it exists and that "
        "you may read and write it, or give kvtui another one with --save-dir DIR."
    )


class SaveStore:
    """The save files in ``directory`` (llama-server's ``--slot-save-path``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.RLock()
        self._index: dict[str, tuple[_Stamp, SaveEntry]] = {}
        self._sorted: list[SaveEntry] | None = None
        self._scanned = False
        self._scanned_dir: tuple[int, int] | None = None  # (directory mtime, scan start), in ns
        self._watching = 0
        self._version = 0  # bumped on every index change, for watch notifications
        self._reserved: set[str] = set()
        self._recent: dict[tuple[str, str], str] = {}
        self._known: KnownChats | None = None
        self._known_generation = 0
        self._inflight: set[str] = set()  # private names of saves in progress (repair skips them)
        self._reported: set[tuple[str, int, int]] = set()  # repair notes already given

    # -- names -------------------------------------------------------------------------------

    def path_for(self, filename: str) -> Path:
        """The file's path; raises ``InvalidSaveName`` for anything but a plain name in here."""
        return self.directory / check_filename(filename)

    def _lstat(self, filename: str) -> os.stat_result | None:
        try:
            return os.lstat(self.directory / filename)
        except OSError:
            return None

    def exists(self, filename: str) -> bool:
        """Whether a regular file (never a symlink) of that name is in the directory."""
        self.path_for(filename)
        st = self._lstat(filename)
        return st is not None and _is_regular(st)

    def _taken(self, name: str) -> bool:
        path = self.directory / name
        return os.path.lexists(path) or os.path.lexists(f"{path}{SIDECAR_SUFFIX}")

    def new_filename(
        self, chat: str, character: str, tag: str | None = None, when: datetime | None = None
    ) -> str:
        """A name for a new save that no file (or earlier call) has: within one second the
        timestamp moves on a second at a time, so names still sort in save order."""
        moment = (when or datetime.now(UTC)).replace(microsecond=0)
        with self._lock:
            name = format_save_name(chat, character, moment, tag)
            while name in self._reserved or self._taken(name):
                moment += timedelta(seconds=1)
                name = format_save_name(chat, character, moment, tag)
            self._reserved.add(name)
            self._recent[(normalize(chat), normalize(character))] = name
        return name

    # -- known SillyTavern chats (extension names) --------------------------------------------

    def set_known_chats(
        self,
        known_chats: KnownChats | Collection[tuple[str, str]] | None,
        members: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        """The chats (``(chat_id, title)``) and members that extension-written names resolve to.

        Entries are rebuilt on the next look-up; ``None`` forgets them (names stay collapsed).
        """
        if known_chats is not None and not isinstance(known_chats, KnownChats):
            known_chats = KnownChats.build(known_chats, members or {})
        with self._lock:
            if known_chats == self._known:
                return
            self._known = known_chats
            self._known_generation += 1
            self._scanned = False  # rebuild every entry on the next look-up

    # -- sidecars ----------------------------------------------------------------------------

    def _load_meta(self, path: Path) -> SaveMeta | None:
        try:
            st = os.lstat(path)
            if not _is_regular(st):
                return None
            return SaveMeta.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError):
            return None

    def read_meta(self, filename: str) -> SaveMeta | None:
        path = self.path_for(filename)
        return self._load_meta(path.with_name(path.name + SIDECAR_SUFFIX))

    def write_meta(self, filename: str, meta: SaveMeta) -> None:
        """Write ``NAME.bin.json`` atomically (temp file, fsync, ``os.replace``), mode 0600.

        Raises ``SaveWriteFailed`` (disk full, read-only directory); the old sidecar, if any,
        is untouched then.
        """
        path = self.path_for(filename)
        target = path.with_name(path.name + SIDECAR_SUFFIX)
        try:
            write_atomic(target, meta.model_dump_json(indent=2))
        except OSError as err:
            raise SaveWriteFailed(
                f"Could not write {target.name} in {self.directory} "
                f"({err.strerror or type(err).__name__}). Free some disk space there (or make "
                "it writable) and save again."
            ) from err
        parsed = parse_save_name(filename)
        if parsed is not None and not parsed.legacy:
            with self._lock:
                self._recent[(parsed.chat, parsed.character)] = filename
        self._refresh(filename)

    # -- index -------------------------------------------------------------------------------

    def _scan(self) -> tuple[dict[str, os.stat_result], dict[str, os.stat_result]]:
        bins: dict[str, os.stat_result] = {}
        sidecars: dict[str, os.stat_result] = {}
        try:
            with os.scandir(self.directory) as it:
                for item in it:
                    name = item.name
                    if name.startswith(".") or is_private_name(name):
                        continue
                    if name.endswith(BIN_SUFFIX):
                        target = bins
                    elif name.endswith(BIN_SUFFIX + SIDECAR_SUFFIX):
                        target = sidecars
                    else:
                        continue
                    with contextlib.suppress(OSError):
                        if item.is_file(follow_symlinks=False):  # symlinks are never listed
                            target[name] = item.stat(follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as err:
            raise _unreadable(self.directory, err) from err
        return bins, sidecars

    def _header(self, name: str) -> SlotFileHeader | SlotFileError:
        try:
            return read_header(self.directory / name)
        except SlotFileError as err:
            return err

    def _entry_for(
        self,
        old: tuple[_Stamp, SaveEntry] | None,
        name: str,
        st: os.stat_result,
        side: os.stat_result | None,
    ) -> tuple[_Stamp, SaveEntry]:
        """The index pair for a file: ``old`` when neither file nor sidecar changed."""
        stamp = (
            st.st_mtime_ns,
            st.st_size,
            side.st_mtime_ns if side else -1,
            side.st_size if side else -1,
            self._known_generation,
        )
        if old is not None and old[0] == stamp:
            return old
        meta = self._load_meta(self.directory / (name + SIDECAR_SUFFIX)) if side else None
        header = self._header(name)
        complete = None
        if isinstance(header, SlotFileHeader) and (meta is None or meta.n_written is None):
            complete = state_is_complete(self.directory / name, header)  # no sidecar vouches
        entry = build_entry(name, st.st_size, st.st_mtime_ns, meta, header, self._known, complete)
        return stamp, entry

    def rescan(self) -> bool:
        """Re-read the directory; returns whether anything changed since the last scan.

        Sidecars are read outside the lock, so a long first scan never blocks ``new_filename``.
        Raises ``SaveDirUnreadable`` when the directory exists but cannot be listed.
        """
        started, dir_stat = time.time_ns(), self._dir_stat()
        bins, sidecars = self._scan()
        previous = self._index
        index = {
            name: self._entry_for(previous.get(name), name, st, sidecars.get(name + SIDECAR_SUFFIX))
            for name, st in bins.items()
        }
        with self._lock:
            self._scanned_dir = None if dir_stat is None else (dir_stat.st_mtime_ns, started)
            current = self._index
            changed = len(index) != len(current) or any(
                current.get(name) is not pair for name, pair in index.items()
            )
            if changed:
                self._index, self._sorted = index, None
                self._version += 1
            self._scanned = True
        return changed

    def _refresh(self, filename: str) -> SaveEntry | None:
        st = None if is_private_name(filename) else self._lstat(filename)
        with self._lock:
            if st is None or not _is_regular(st):
                if filename in self._index:
                    self._index = {k: v for k, v in self._index.items() if k != filename}
                    self._sorted = None
                    self._version += 1
                return None
            side = self._lstat(filename + SIDECAR_SUFFIX)
            if side is not None and not _is_regular(side):
                side = None
            pair = self._entry_for(self._index.get(filename), filename, st, side)
            if self._index.get(filename) is not pair:
                self._index = {**self._index, filename: pair}
                self._sorted = None
                self._version += 1
            return pair[1]

    def _dir_stat(self) -> os.stat_result | None:
        try:
            return os.stat(self.directory)
        except OSError:
            return None

    def ensure_fresh(self) -> None:
        """Bring the index up to date, cheaply when nothing can have changed."""
        self._fresh()

    def _fresh(self) -> None:
        """Rescan unless nothing can have been added or removed since the last scan: a running
        ``watch`` keeps the index current, or the directory's mtime is unchanged (and was
        already old at the last scan, so a coarse mtime clock cannot hide a change)."""
        if self._scanned and self._watching:
            return
        scanned = self._scanned_dir
        if scanned is not None and self._scanned:
            dir_mtime, started = scanned
            now = self._dir_stat()
            if now and now.st_mtime_ns == dir_mtime and started - dir_mtime > _MTIME_SLACK_NS:
                return
        self.rescan()

    def _all(self) -> list[SaveEntry]:
        if not self._scanned:
            self.rescan()
        listing = self._sorted
        if listing is None:
            with self._lock:
                listing = sorted(
                    (entry for _, entry in self._index.values()),
                    key=lambda e: e.sort_key,
                    reverse=True,
                )
                self._sorted = listing
        return listing

    def entries(self, *, include_damaged: bool = False) -> list[SaveEntry]:
        """Every loadable save, newest first (scanning once if nothing was scanned yet).

        Files unfit to restore (``entry.problem``) are left out unless ``include_damaged``.
        """
        listing = self._all()
        if include_damaged:
            return list(listing)
        return [e for e in listing if e.problem is None]

    def damaged(self) -> list[SaveEntry]:
        """Save files that are not fit to restore (each with its ``problem``), newest first."""
        return [e for e in self._all() if e.problem is not None]

    def get(self, filename: str) -> SaveEntry | None:
        """The entry for one file, read fresh from disk; ``None`` when it does not exist (or is
        a symlink or a private name). Damaged files are returned too: see ``entry.problem``."""
        return self._refresh(check_filename(filename))

    def latest(self, chat: str, character: str, *, n_ctx: int | None = None) -> SaveEntry | None:
        """The newest sound save (autosave or tagged) of exactly this chat and character.

        Damaged files are passed over, so an older good save wins over a cut-short newest one;
        with ``n_ctx`` (the slot's context) so are saves holding more tokens than fit.
        """
        self._fresh()
        chat_key, character_key = normalize(chat), normalize(character)
        for entry in self.entries():
            if entry.chat_key != chat_key or entry.character_key != character_key:
                continue
            if n_ctx and entry.n_tokens is not None and entry.n_tokens > n_ctx:
                continue
            return entry
        return None

    def check_restorable(self, entry: SaveEntry | str, n_ctx: int | None = None) -> SaveEntry:
        """Check, without the server, that a save may be restored into a slot of ``n_ctx``
        tokens; returns the fresh entry or raises ``NotRestorable`` (see
        ``kvtui.store.safety.check_restorable``)."""
        from kvtui.store.safety import check_restorable

        return check_restorable(self, entry, n_ctx)

    def pick_restorable(
        self,
        chat: str,
        character: str,
        n_ctx: int | None = None,
        *,
        prompt_text: str | None = None,
        min_shared: float = 0.5,
    ) -> tuple[SaveEntry | None, list[str]]:
        """Autoload's choice: the newest save that passes every check, and a note per newer
        file passed over (see ``kvtui.store.safety.pick_restorable``)."""
        from kvtui.store.safety import pick_restorable

        return pick_restorable(
            self, chat, character, n_ctx, prompt_text=prompt_text, min_shared=min_shared
        )

    # -- saving and repair (kvtui.store.saving) ----------------------------------------------

    async def save_verified(
        self,
        client: SlotSaver,
        slot: int,
        final_name: str,
        meta: SaveMeta,
        *,
        min_tokens: int = 1,
        min_bytes: int = 0,
        unless_same_as: str | None = None,
    ) -> SaveEntry:
        """Save ``slot`` under ``final_name`` only once complete and verified (see
        ``kvtui.store.saving.save_verified``)."""
        from kvtui.store.saving import save_verified

        return await save_verified(
            self,
            client,
            slot,
            final_name,
            meta,
            min_tokens=min_tokens,
            min_bytes=min_bytes,
            unless_same_as=unless_same_as,
        )

    def repair(self) -> list[str]:
        """Clean up after a crash; one note per thing done (see ``kvtui.store.saving.repair``)."""
        from kvtui.store.saving import repair

        return repair(self)

    # -- deleting ----------------------------------------------------------------------------

    def delete(self, filename: str) -> bool:
        """Delete a save and its sidecar; returns whether the save file existed."""
        path = self.path_for(filename)
        existed = True
        try:
            path.unlink()
        except FileNotFoundError:
            existed = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f"{path}{SIDECAR_SUFFIX}")
        self._refresh(filename)
        return existed

    def rotate(
        self, chat: str, character: str, keep: int, *, protect: Collection[str] = ()
    ) -> list[str]:
        """Delete the oldest sound autosaves of (chat, character) beyond the newest ``keep``;
        returns the deleted names (see ``kvtui.store.safety.rotate``)."""
        from kvtui.store.safety import rotate

        return rotate(self, chat, character, keep, protect=protect)

    # -- watching ----------------------------------------------------------------------------

    async def watch(
        self,
        on_change: Callable[[], None],
        stop_event: asyncio.Event,
        *,
        debounce_ms: int = 300,
        resync_seconds: float = 30.0,
        force_polling: bool | None = None,
    ) -> None:
        """Keep the index current until ``stop_event`` is set (see ``kvtui.store.watching``)."""
        from kvtui.store.watching import watch_store

        await watch_store(
            self,
            on_change,
            stop_event,
            debounce_ms=debounce_ms,
            resync_seconds=resync_seconds,
            force_polling=force_polling,
        )
