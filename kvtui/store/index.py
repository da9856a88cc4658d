"""The save directory's index: which ``*.bin`` files are there, each with its entry.

The index is rebuilt incrementally: a file whose size and mtime (and its sidecar's) did not change
keeps its entry, so a rescan reads only new or changed sidecars and headers. ``_fresh`` skips the
scan altogether when a running watch keeps the index current or the directory's mtime shows
nothing was added or removed. Symlinks and private names (``.kvtui-*``) are never listed.

:class:`kvtui.store.store.SaveStore` builds on this with names, sidecar writes, saving, deleting,
rotation and watching.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Collection, Mapping
from pathlib import Path

from pydantic import ValidationError

from kvtui.store.entries import SaveEntry, SaveMeta, build_entry
from kvtui.store.errors import SaveDirUnreadable
from kvtui.store.extension import KnownChats
from kvtui.store.names import BIN_SUFFIX, check_filename, is_private_name, normalize
from kvtui.store.slotfile import SlotFileError, SlotFileHeader, read_header, state_is_complete

SIDECAR_SUFFIX = ".json"

_Stamp = tuple[int, int, int, int, int]
_MTIME_SLACK_NS = 2_000_000_000  # coarse file-system clocks (FAT: 2 s)


def is_regular(st: os.stat_result) -> bool:
    """A regular file (``lstat`` result: a symlink is not one)."""
    return stat.S_ISREG(st.st_mode)


def _unreadable(directory: Path, err: OSError) -> SaveDirUnreadable:
    reason = err.strerror or type(err).__name__
    return SaveDirUnreadable(
        f"Cannot read the save directory {directory} ({reason}). Check that it exists and that "
        "you may read and write it, or give kvtui another one with --save-dir DIR."
    )


class SaveIndex:
    """The listing of the save files in ``directory``, kept current cheaply."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.RLock()
        self._index: dict[str, tuple[_Stamp, SaveEntry]] = {}
        self._sorted: list[SaveEntry] | None = None
        self._scanned = False
        self._scanned_dir: tuple[int, int] | None = None  # (directory mtime, scan start), in ns
        self._watching = 0
        self._version = 0  # bumped on every index change, for watch notifications
        self._known: KnownChats | None = None
        self._known_generation = 0

    def _lstat(self, filename: str) -> os.stat_result | None:
        try:
            return os.lstat(self.directory / filename)
        except OSError:
            return None

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

    # -- sidecars and entries ---------------------------------------------------------------

    def _load_meta(self, path: Path) -> SaveMeta | None:
        try:
            st = os.lstat(path)
            if not is_regular(st):
                return None
            return SaveMeta.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError):
            return None

    # -- the index -------------------------------------------------------------------------------

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
            if st is None or not is_regular(st):
                if filename in self._index:
                    self._index = {k: v for k, v in self._index.items() if k != filename}
                    self._sorted = None
                    self._version += 1
                return None
            side = self._lstat(filename + SIDECAR_SUFFIX)
            if side is not None and not is_regular(side):
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
