"""The save directory: an index of save files and their sidecars, new names, rotation, watching.

llama-server has no API to list or delete saves, so kvtui reads its ``--slot-save-path`` itself.
Every ``*.bin`` file is listed: names in the seed's format (kvtui's and the KV Cache Manager
extension's) by chat and character, the extension's older ``_slot{N}`` names as ``legacy`` entries
under "slot N", and any other ``.bin`` (say ``persist.bin`` saved by hand) under
``UNPARSED_CHAT`` with its modification time, so it can still be loaded. Rotation and ``latest``
only ever see parsed names of the exact (normalised) chat and character. Hidden files and other
extensions are ignored.

A sidecar ``NAME.bin.json`` (``SaveMeta``) keeps what a name cannot: the raw names, the tag, token
and byte counts, model and context. Rescans are incremental: a file whose size and mtime (and its
sidecar's) did not change keeps its entry, so only new or changed sidecars are ever read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from kvtui.atomic import write_atomic
from kvtui.store.names import (
    BIN_SUFFIX,
    check_filename,
    format_save_name,
    normalize,
    parse_save_name,
)

SIDECAR_SUFFIX = ".json"
UNPARSED_CHAT = "(other files)"
"""Display chat of ``.bin`` files whose names kvtui cannot read; their ``chat_key`` is ``""``."""

_Stamp = tuple[int, int, int, int]
_MTIME_SLACK_NS = 2_000_000_000  # coarse file-system clocks (FAT: 2 s)


class SaveMeta(BaseModel):
    """The sidecar of one save: raw names and what the server reported when saving."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    chat: str
    character: str
    tag: str | None = None
    n_saved: int | None = None
    n_written: int | None = None
    model: str | None = None
    build_info: str | None = None
    n_ctx: int | None = None
    slot: int | None = None
    saved_at: datetime | None = None

    @field_validator("saved_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """Naive times (hand-edited sidecars) are read as UTC, so entries always compare."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


@dataclass(frozen=True)
class SaveEntry:
    """One save file. ``chat``/``character``/``tag`` are raw names from the sidecar when it exists
    (and agrees with the file name), else the names' normalised forms. ``chat_key`` and
    ``character_key`` are the normalised forms, for matching."""

    filename: str
    chat: str
    character: str
    tag: str | None
    timestamp: datetime
    size: int
    n_saved: int | None
    meta: SaveMeta | None
    chat_key: str
    character_key: str
    legacy: bool = False
    slot: int | None = None
    parsed: bool = True

    @property
    def sort_key(self) -> tuple[datetime, str]:
        return (self.timestamp, self.filename)


def is_valid_save(n_saved: int, n_written: int, *, min_tokens: int = 1, min_bytes: int = 0) -> bool:
    """Whether a save response is a real save: ``n_saved == 0`` is an empty slot, never a save.

    The seed's "smaller than 1 MB" rule is ``min_bytes=1_048_576``, off by default.
    """
    # n_written == 0 with tokens: the server could not write the file (disk full, I/O error)
    # yet answered 200; a partial file may be on disk.
    return n_saved > 0 and n_saved >= min_tokens and n_written > 0 and n_written >= min_bytes


def _build_entry(name: str, size: int, mtime_ns: int, meta: SaveMeta | None) -> SaveEntry:
    parsed = parse_save_name(name)
    if parsed is None:  # listed (and loadable) as itself, never anyone's save
        return SaveEntry(
            filename=name,
            chat=UNPARSED_CHAT,
            character=name[: -len(BIN_SUFFIX)],
            tag=None,
            timestamp=datetime.fromtimestamp(mtime_ns / 1e9, UTC),
            size=size,
            n_saved=meta.n_saved if meta else None,
            meta=meta,
            chat_key="",
            character_key=f"~file:{name}",
            parsed=False,
        )
    if parsed.legacy:
        return SaveEntry(
            filename=name,
            chat=parsed.chat,
            character=f"slot {parsed.slot}",
            tag=parsed.tag,
            timestamp=parsed.timestamp,
            size=size,
            n_saved=None,
            meta=None,
            chat_key=parsed.chat,
            character_key=f"~slot{parsed.slot}",
            legacy=True,
            slot=parsed.slot,
        )
    if meta is not None and (
        normalize(meta.chat) != parsed.chat or normalize(meta.character) != parsed.character
    ):
        meta = None  # a sidecar that belongs to some other save
    return SaveEntry(
        filename=name,
        chat=meta.chat if meta else parsed.chat,
        character=meta.character if meta else parsed.character,
        tag=meta.tag if meta is not None and meta.tag is not None else parsed.tag,
        timestamp=parsed.timestamp,
        size=size,
        n_saved=meta.n_saved if meta else None,
        meta=meta,
        chat_key=parsed.chat,
        character_key=parsed.character,
        slot=meta.slot if meta else None,
    )


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def _relevant(_change: object, path: str) -> bool:
    name = os.path.basename(path)
    return not name.startswith(".") and name.endswith((BIN_SUFFIX, BIN_SUFFIX + SIDECAR_SUFFIX))


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

    # -- names -------------------------------------------------------------------------------

    def path_for(self, filename: str) -> Path:
        """The file's path; raises ``InvalidSaveName`` for anything but a plain name in here."""
        return self.directory / check_filename(filename)

    def exists(self, filename: str) -> bool:
        return self.path_for(filename).is_file()

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

    # -- sidecars ----------------------------------------------------------------------------

    def _load_meta(self, path: Path) -> SaveMeta | None:
        try:
            return SaveMeta.model_validate_json(path.read_bytes())
        except (OSError, ValidationError, ValueError):
            return None

    def read_meta(self, filename: str) -> SaveMeta | None:
        path = self.path_for(filename)
        return self._load_meta(path.with_name(path.name + SIDECAR_SUFFIX))

    def write_meta(self, filename: str, meta: SaveMeta) -> None:
        """Write ``NAME.bin.json`` atomically (temp file, fsync, ``os.replace``)."""
        path = self.path_for(filename)
        write_atomic(path.with_name(path.name + SIDECAR_SUFFIX), meta.model_dump_json(indent=2))
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
                    if name.startswith("."):
                        continue
                    if name.endswith(BIN_SUFFIX):
                        target = bins
                    elif name.endswith(BIN_SUFFIX + SIDECAR_SUFFIX):
                        target = sidecars
                    else:
                        continue
                    with contextlib.suppress(OSError):
                        if item.is_file():
                            target[name] = item.stat()
        except (FileNotFoundError, NotADirectoryError):
            pass
        return bins, sidecars

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
        )
        if old is not None and old[0] == stamp:
            return old
        meta = self._load_meta(self.directory / (name + SIDECAR_SUFFIX)) if side else None
        return stamp, _build_entry(name, st.st_size, st.st_mtime_ns, meta)

    def rescan(self) -> bool:
        """Re-read the directory; returns whether anything changed since the last scan.

        Sidecars are read outside the lock, so a long first scan never blocks ``new_filename``.
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
        path = self.directory / filename
        try:
            st = path.stat()
        except OSError:
            st = None
        with self._lock:
            if st is None or not path.is_file():
                if filename in self._index:
                    self._index = {k: v for k, v in self._index.items() if k != filename}
                    self._sorted = None
                    self._version += 1
                return None
            try:
                side: os.stat_result | None = os.stat(f"{path}{SIDECAR_SUFFIX}")
            except OSError:
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

    def entries(self) -> list[SaveEntry]:
        """Every save, newest first (scanning once if nothing was scanned yet)."""
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
        return list(listing)

    def get(self, filename: str) -> SaveEntry | None:
        """The entry for one file, read fresh from disk; ``None`` when it does not exist."""
        return self._refresh(check_filename(filename))

    def latest(self, chat: str, character: str) -> SaveEntry | None:
        """The newest save (autosave or tagged) of exactly this chat and character."""
        self._fresh()
        chat_key, character_key = normalize(chat), normalize(character)
        for entry in self.entries():
            if entry.chat_key == chat_key and entry.character_key == character_key:
                return entry
        return None

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
        """Delete the oldest autosaves of (chat, character) beyond the newest ``keep``.

        Tagged saves are never touched. The save most recently named or written for this pair
        (and anything in ``protect``) is always kept and counts towards ``keep``, even when
        other files carry later timestamps (the extension stamps names in local time).
        Returns the deleted names.
        """
        if keep < 0:
            raise ValueError("keep must be >= 0")
        self._fresh()
        chat_key, character_key = normalize(chat), normalize(character)
        protected = set(protect)
        with self._lock:
            if (recent := self._recent.get((chat_key, character_key))) is not None:
                protected.add(recent)
        autosaves = [
            e
            for e in self.entries()
            if e.parsed
            and e.tag is None
            and e.chat_key == chat_key
            and e.character_key == character_key
        ]
        room = keep - sum(1 for e in autosaves if e.filename in protected)
        deleted: list[str] = []
        for entry in autosaves:
            if entry.filename in protected:
                continue
            if room > 0:
                room -= 1
                continue
            with contextlib.suppress(OSError):
                self.delete(entry.filename)
                deleted.append(entry.filename)
        return deleted

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
        """Keep the index current until ``stop_event`` is set.

        File-system events (``watchfiles``, debounced by ``debounce_ms``) trigger a rescan;
        ``on_change`` is called whenever the index changed since the last call, including
        through this store's own writes and deletes. A full rescan also runs every
        ``resync_seconds`` in case an event was lost; a missing or replaced directory is
        waited for and watched again.
        """
        from watchfiles import awatch

        notified = self._version

        async def sync() -> None:
            nonlocal notified
            await asyncio.to_thread(self.rescan)
            if self._version != notified:
                notified = self._version
                on_change()

        self._watching += 1
        try:
            while not stop_event.is_set():
                await sync()
                watched = self._dir_stat()
                if watched is None:
                    await _wait(stop_event, 1.0)
                    continue
                try:
                    async for _changes in awatch(
                        self.directory,
                        watch_filter=_relevant,
                        debounce=debounce_ms,
                        stop_event=stop_event,
                        rust_timeout=max(1, int(resync_seconds * 1000)),
                        yield_on_timeout=True,
                        recursive=False,
                        force_polling=force_polling,
                        ignore_permission_denied=True,
                    ):
                        await sync()
                        now = self._dir_stat()
                        if now is None or now.st_ino != watched.st_ino:
                            break  # deleted or replaced: watch the new one
                except OSError:
                    await _wait(stop_event, 1.0)
        finally:
            self._watching -= 1
