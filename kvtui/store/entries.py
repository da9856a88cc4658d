"""One save file as the store sees it: its sidecar (``SaveMeta``), its entry (``SaveEntry``).

An entry is built from the file name, its size, its sidecar and its slot-file header. Whatever
makes a file unfit to restore — zero bytes, a size other than the sidecar's ``n_written``, a
header that is not a slot file's or is cut inside its token list — is kept in
``SaveEntry.problem``; such entries are never listed as loadable, never picked by autoload and
never counted or deleted by rotation.

Names the KV Cache Manager extension wrote (no sidecar, its collapsed charset) are resolved
against the known SillyTavern chats (``KnownChats``): a unique match lists the file under the
real chat and member, its stamp read as local time; an ambiguous one keeps its collapsed names
and says so in ``SaveEntry.resolution``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from kvtui.fingerprint import FingerprintError, PromptFingerprint
from kvtui.store.extension import (
    KnownChats,
    Match,
    Resolution,
    could_be_extension_name,
    local_to_utc,
    resolve_extension_names,
)
from kvtui.store.names import BIN_SUFFIX, ParsedName, normalize, parse_save_name
from kvtui.store.slotfile import SlotFileError, SlotFileHeader

UNPARSED_CHAT = "(other files)"
"""Display chat of ``.bin`` files whose names kvtui cannot read; their ``chat_key`` is ``""``."""


class SaveMeta(BaseModel):
    """The sidecar of one save: raw names and what the server reported when saving.

    ``fingerprint`` is ``PromptFingerprint.to_json()`` of the prompt the save holds (None in
    older sidecars); ``adopted`` marks sidecars that ``SaveStore.repair`` wrote for a save that
    had lost its own.
    """

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
    fingerprint: dict[str, Any] | None = None
    adopted: bool = False

    @field_validator("saved_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """Naive times (hand-edited sidecars) are read as UTC, so entries always compare."""
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    @field_validator("fingerprint", mode="before")
    @classmethod
    def _fingerprint(cls, value: Any) -> Any:
        if isinstance(value, PromptFingerprint):
            return value.to_json()
        return value

    def prompt_fingerprint(self) -> PromptFingerprint | None:
        """The stored fingerprint, or None when there is none or it cannot be read."""
        if self.fingerprint is None:
            return None
        try:
            return PromptFingerprint.from_json(self.fingerprint)
        except FingerprintError:
            return None


@dataclass(frozen=True)
class SaveEntry:
    """One save file. ``chat``/``character``/``tag`` are raw names from the sidecar when it exists
    (and agrees with the file name), the real names an extension name resolved to, else the
    names' normalised forms. ``chat_key`` and ``character_key`` are the normalised forms, for
    matching. ``problem`` (None for a sound file) says why the file must not be restored;
    ``n_tokens`` is the token count from its header."""

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
    n_tokens: int | None = None
    problem: str | None = None
    resolution: Resolution | None = None

    @property
    def sort_key(self) -> tuple[datetime, str]:
        return (self.timestamp, self.filename)

    @property
    def valid(self) -> bool:
        return self.problem is None

    @property
    def verified(self) -> bool:
        """Sound, and its size proved by a sidecar's ``n_written`` (kvtui's own saves)."""
        return self.problem is None and self.meta is not None and self.meta.n_written is not None

    @property
    def from_extension(self) -> bool:
        return self.resolution is not None


def is_valid_save(n_saved: int, n_written: int, *, min_tokens: int = 1, min_bytes: int = 0) -> bool:
    """Whether a save response is a real save: ``n_saved == 0`` is an empty slot, never a save.

    The seed's "smaller than 1 MB" rule is ``min_bytes=1_048_576``, off by default.
    """
    # n_written == 0 with tokens: the server could not write the file (disk full, I/O error)
    # yet answered 200; a partial file may be on disk.
    return n_saved > 0 and n_saved >= min_tokens and n_written > 0 and n_written >= min_bytes


def file_problem(
    size: int,
    meta: SaveMeta | None,
    header: SlotFileHeader | SlotFileError | None,
    complete: bool | None = None,
) -> str | None:
    """Why a file of ``size`` bytes with this sidecar and header cannot be restored (or None).

    ``complete`` is ``slotfile.state_is_complete`` for files whose size no sidecar vouches for.
    """
    if size == 0:
        return "it is empty (0 bytes)"
    if meta is not None and meta.n_written is not None and meta.n_written != size:
        if size < meta.n_written:
            return f"it is cut short: {size:,} of the {meta.n_written:,} bytes it was saved with"
        return f"it is {size:,} bytes, not the {meta.n_written:,} it was saved with"
    if isinstance(header, SlotFileError):
        return str(header)
    if complete is False:
        return "it is cut short: its KV data ends before the end its header describes"
    if header is not None and meta is not None and meta.n_saved is not None:
        if header.n_tokens != meta.n_saved:
            return (
                f"its header holds {header.n_tokens} tokens, not the {meta.n_saved} it was "
                "saved with"
            )
    return None


def _extension_entry(
    name: str, parsed: ParsedName, base: dict[str, Any], known: KnownChats | None
) -> dict[str, Any] | None:
    """The fields of an entry for an extension-written name, when the known chats resolve it."""
    if known is None:
        return None
    resolution = resolve_extension_names(parsed, known)
    if resolution.status is Match.UNKNOWN:
        return None
    out = dict(base, resolution=resolution)
    if parsed.legacy:
        out["timestamp"] = parsed.timestamp if parsed.utc_stamp else local_to_utc(parsed.timestamp)
    else:
        out["timestamp"] = local_to_utc(parsed.timestamp)
    if resolution.tag is not None:
        out["tag"] = resolution.tag
    if resolution.chat is not None:
        out["chat"], out["chat_key"] = resolution.chat, normalize(resolution.chat)
    if resolution.character is not None:
        out["character"] = resolution.character
        out["character_key"] = normalize(resolution.character)
    return out


def build_entry(
    name: str,
    size: int,
    mtime_ns: int,
    meta: SaveMeta | None,
    header: SlotFileHeader | SlotFileError | None,
    known: KnownChats | None = None,
    complete: bool | None = None,
) -> SaveEntry:
    """The entry for one ``.bin`` file (see the module docstring)."""
    parsed = parse_save_name(name)
    if parsed is not None and not parsed.legacy and meta is not None:
        if not (
            parsed.chat in (meta.chat, normalize(meta.chat))
            and parsed.character in (meta.character, normalize(meta.character))
        ):
            meta = None  # a sidecar that belongs to some other save
    n_tokens = header.n_tokens if isinstance(header, SlotFileHeader) else None
    common: dict[str, Any] = {
        "filename": name,
        "size": size,
        "n_tokens": n_tokens,
        "problem": file_problem(size, meta, header, complete),
    }
    if parsed is None:  # listed (and loadable) as itself, never anyone's save
        return SaveEntry(
            chat=UNPARSED_CHAT,
            character=name[: -len(BIN_SUFFIX)],
            tag=None,
            timestamp=datetime.fromtimestamp(mtime_ns / 1e9, UTC),
            n_saved=meta.n_saved if meta else n_tokens,
            meta=meta,
            chat_key="",
            character_key=f"~file:{name}",
            parsed=False,
            **common,
        )
    if parsed.legacy:
        base = dict(
            common,
            chat=parsed.chat,
            character=f"slot {parsed.slot}",
            tag=parsed.tag,
            timestamp=parsed.timestamp,
            n_saved=n_tokens,
            meta=None,
            chat_key=parsed.chat,
            character_key=f"~slot{parsed.slot}",
            legacy=True,
            slot=parsed.slot,
        )
        return SaveEntry(**(_extension_entry(name, parsed, base, known) or base))
    base = dict(
        common,
        chat=meta.chat if meta else parsed.chat,
        character=meta.character if meta else parsed.character,
        tag=meta.tag if meta is not None and meta.tag is not None else parsed.tag,
        timestamp=parsed.timestamp,
        n_saved=meta.n_saved if meta else n_tokens,
        meta=meta,
        chat_key=parsed.chat,
        character_key=parsed.character,
        slot=meta.slot if meta else None,
    )
    if (meta is None or meta.adopted) and could_be_extension_name(name[: -len(BIN_SUFFIX)]):
        resolved = _extension_entry(name, parsed, base, known)
        if resolved is not None and _is_extension_match(parsed, resolved):
            return SaveEntry(**resolved)
    return SaveEntry(**base)


def _is_extension_match(parsed: ParsedName, fields: dict[str, Any]) -> bool:
    """Whether the extension reading beats kvtui's own: it names a chat kvtui's keys do not."""
    resolution: Resolution = fields["resolution"]
    if resolution.status is Match.AMBIGUOUS:
        return True
    # kvtui's own normalisation gives this very name: it is (also) kvtui's, keep kvtui's reading.
    return not (
        resolution.chat is not None
        and normalize(resolution.chat) == parsed.chat
        and (resolution.character is None or normalize(resolution.character) == parsed.character)
    )
