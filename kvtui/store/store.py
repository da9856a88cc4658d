"""The save directory: an index of save files and their sidecars, new names, rotation, watching.

llama-server has no API to list or delete saves, so kvtui reads its ``--slot-save-path`` itself.
Every ``*.bin`` file is listed: names in the seed's format (kvtui's and the KV Cache Manager
extension's) by chat and character, the extension's older ``_slot{N}`` names as ``legacy`` entries
under "slot N", and any other ``.bin`` (say ``persist.bin`` saved by hand) under
``UNPARSED_CHAT`` with its modification time, so it can still be loaded. Rotation and ``latest``
only ever see parsed names of the exact (normalised) chat and character. Hidden files and other
extensions are ignored.

A sidecar ``NAME.bin.json`` (``SaveMeta``) keeps what a name cannot: the raw names, the tag, token
and byte counts, model, context and a prompt fingerprint. The listing itself (incremental
rescans, freshness) is :class:`kvtui.store.index.SaveIndex`, which ``SaveStore`` extends.

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
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from kvtui.atomic import write_atomic
from kvtui.store.entries import UNPARSED_CHAT, SaveEntry, SaveMeta, is_valid_save
from kvtui.store.errors import SaveWriteFailed
from kvtui.store.index import SIDECAR_SUFFIX, SaveIndex, is_regular
from kvtui.store.names import check_filename, format_save_name, normalize, parse_save_name

if TYPE_CHECKING:
    from kvtui.store.saving import SlotSaver

__all__ = ["UNPARSED_CHAT", "SaveEntry", "SaveMeta", "SaveStore", "is_valid_save"]


class SaveStore(SaveIndex):
    """The save files in ``directory`` (llama-server's ``--slot-save-path``).

    Listing and look-ups (``entries``, ``get``, ``latest``, ``rescan``, ``set_known_chats``)
    come from :class:`~kvtui.store.index.SaveIndex`; this adds what changes the directory.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self._reserved: set[str] = set()
        self._recent: dict[tuple[str, str], str] = {}
        self._inflight: set[str] = set()  # private names of saves in progress (repair skips them)
        self._reported: set[tuple[str, int, int]] = set()  # repair notes already given

    # -- names -------------------------------------------------------------------------------

    def path_for(self, filename: str) -> Path:
        """The file's path; raises ``InvalidSaveName`` for anything but a plain name in here."""
        return self.directory / check_filename(filename)

    def exists(self, filename: str) -> bool:
        """Whether a regular file (never a symlink) of that name is in the directory."""
        self.path_for(filename)
        st = self._lstat(filename)
        return st is not None and is_regular(st)

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
