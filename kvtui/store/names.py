"""Save-file names: normalising chat, character and tag text, formatting and parsing names.

The names are the seed's (``seeds/000`` "Формат файлов"), with the timestamp in UTC::

    {chat}_{YYYYMMDDHHmmss}_character_{name}.bin
    {chat}_{YYYYMMDDHHmmss}_tag_{tag}_character_{name}.bin

Normalisation (``normalize``) turns raw text into one name component:

* NFC, then every whitespace character becomes ``_``; Unicode letters, marks, digits, punctuation
  and symbols stay (``важный момент`` → ``важный_момент``).
* Dropped: path separators and the other characters llama-server refuses (``/ \\ : * ? " < > |``,
  controls, format characters, U+FF0E, U+2215, U+2216, U+FFFD), ``~`` (kept for the hash mark),
  leading and trailing dots; runs of dots become one dot (the server refuses any ``..``).
* A component never contains the *token* ``tag`` or ``character`` (a run between underscores):
  such a token is capitalised (``my tag`` → ``my_Tag~…``).
* The component is at most ``MAX_COMPONENT_BYTES`` UTF-8 bytes, so a whole name stays far below
  the 255-byte limit, sidecar (``NAME.bin.json``) included. Never empty: ``unnamed~…``.

Collision freedom: reading ``_`` back as a space is the only inverse. When that inverse does not
give the (NFC) raw text back — because something was dropped or rewritten, the text held an
underscore, non-space whitespace, or was cut short — the component gets ``~`` plus eight base32
characters of a BLAKE2b hash of the raw text. ``~`` never appears otherwise, so two different
texts only share a component if their 40-bit hashes collide. Spaces win the readable form because
chat ids, character names and typed tags use spaces far more than underscores: ``Forest Party`` is
``Forest_Party``; ``Forest_Party`` is ``Forest_Party~…``. Canonically equivalent texts (NFC/NFD)
are one name, as they are on macOS file systems.

Unambiguous parsing: split the stem on ``_``. No component holds a ``tag`` or ``character`` token,
so the first ``character`` token is the separator, the first ``tag`` token before it (if any) is
the tag separator, and the timestamp is the token right before that; 14-digit runs elsewhere do
not matter. Raw text may contain ``_tag_``, ``_character_``, digits, ``../`` or anything else.
Names written by the SillyTavern KV Cache Manager extension use the same format (with its
ASCII-only normalisation and local-time stamps; ``kvtui.store.extension`` maps them back to real
chats and reads the stamps as local time) and parse the same way (even its chats containing
``_tag_``, which its own parser gets wrong); its older ``_slot{N}`` formats parse as ``legacy``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from kvtui.store.errors import StoreError

BIN_SUFFIX = ".bin"
MAX_COMPONENT_BYTES = 64
"""Per component; three components plus the fixed parts stay under 230 bytes."""
MAX_FILENAME_BYTES = 255
HASH_MARK = "~"
PLACEHOLDER = "unnamed"

_HASH_CHARS = 8  # 5 bytes of BLAKE2b in base32: 40 bits
_RESERVED_TOKENS = {"tag": "Tag", "character": "Character"}
_SERVER_FORBIDDEN = frozenset('/\\:*?"<>|') | {"\uff0e", "\u2215", "\u2216", "\ufffd", "\ufeff"}
_DROPPED = _SERVER_FORBIDDEN | {HASH_MARK}
_DOT_RUNS = re.compile(r"\.{2,}")

_LEGACY_PATTERNS = (
    # {chat}_{ts}_tag_{tag}_slot{N}: the first timestamp followed by _tag_ wins.
    re.compile(r"(?P<chat>.+?)_(?P<ts>\d{14})_tag_(?P<tag>.+)_slot(?P<slot>\d+)", re.A | re.S),
    # {chatId}_{ts}_named_{tag}_slot{N} (Nov 2025)
    re.compile(r"(?P<chat>.+?)_(?P<ts>\d{14})_named_(?P<tag>.+)_slot(?P<slot>\d+)", re.A | re.S),
    # {chat}_{ts}_slot{N}, also prefixed by a typed save name: {tag}_{chat}_{ts}_slot{N}
    re.compile(r"(?P<chat>.+)_(?P<ts>\d{14})_slot(?P<slot>\d+)", re.A | re.S),
    # {chat}_slot{N}_{ts}, also {tag}_{chat}_slot{N}_{ts}: the first version, stamped in UTC
    re.compile(r"(?P<chat>.+)_slot(?P<slot>\d+)_(?P<ts>\d{14})", re.A | re.S),
)
_UTC_LEGACY = _LEGACY_PATTERNS[-1]


class InvalidSaveName(StoreError, ValueError):
    """A name that is not a plain file name inside the save directory, or the server refuses."""


@dataclass(frozen=True)
class ParsedName:
    """What a save's file name says. Components are the normalised forms found in the name.

    ``legacy`` names are the extension's older ``_slot{N}`` formats: ``character`` is ``""`` and
    ``slot`` the slot number.
    """

    chat: str
    character: str
    timestamp: datetime
    tag: str | None = None
    slot: int | None = None
    legacy: bool = False
    utc_stamp: bool = False
    """Legacy names whose stamp is UTC (the extension's first form); the others are local."""


def _digest(text: str) -> str:
    raw = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=5).digest()
    return base64.b32encode(raw).decode("ascii").lower()


def _readable(nfc: str) -> str:
    """The component before the collision check: safe characters only, no reserved tokens."""
    kept: list[str] = []
    for ch in nfc:
        if ch.isspace():
            kept.append("_")
        elif ch in _DROPPED or unicodedata.category(ch)[0] == "C":
            continue
        else:
            kept.append(ch)
    slug = _DOT_RUNS.sub(".", unicodedata.normalize("NFC", "".join(kept))).strip(".")
    return "_".join(_RESERVED_TOKENS.get(token, token) for token in slug.split("_"))


def _truncate(text: str, max_bytes: int) -> str:
    data = text.encode("utf-8")
    if len(data) <= max_bytes:
        return text
    return data[:max_bytes].decode("utf-8", "ignore")


@lru_cache(maxsize=16384)
def normalize(text: str) -> str:
    """One file-name component for ``text``: readable, safe, bounded and collision-free."""
    nfc = unicodedata.normalize("NFC", text)
    slug = _readable(nfc)
    if slug and slug.replace("_", " ") == nfc and len(slug.encode("utf-8")) <= MAX_COMPONENT_BYTES:
        return slug
    head = _truncate(slug or PLACEHOLDER, MAX_COMPONENT_BYTES - len(HASH_MARK) - _HASH_CHARS)
    return f"{head}{HASH_MARK}{_digest(nfc)}"


def format_timestamp(when: datetime) -> str:
    """``YYYYMMDDHHmmss`` in UTC. Naive datetimes are refused: local time misorders saves."""
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError("save timestamps need an aware datetime (kvtui names use UTC)")
    t = when.astimezone(UTC)
    return f"{t.year:04d}{t.month:02d}{t.day:02d}{t.hour:02d}{t.minute:02d}{t.second:02d}"


def format_save_name(chat: str, character: str, when: datetime, tag: str | None = None) -> str:
    """The seed's file name for a save of ``character`` in ``chat`` at ``when``.

    ``tag=None`` is an autosave; any string, even ``""``, is a tag.
    """
    parts = [normalize(chat), format_timestamp(when)]
    if tag is not None:
        parts += ["tag", normalize(tag)]
    parts += ["character", normalize(character)]
    return "_".join(parts) + BIN_SUFFIX


def _timestamp(token: str) -> datetime | None:
    if len(token) != 14 or not (token.isascii() and token.isdigit()):
        return None
    try:
        return datetime(
            int(token[0:4]),
            int(token[4:6]),
            int(token[6:8]),
            int(token[8:10]),
            int(token[10:12]),
            int(token[12:14]),
            tzinfo=UTC,
        )
    except ValueError:
        return None


def _parse_current(stem: str) -> ParsedName | None:
    tokens = stem.split("_")
    for c, token in enumerate(tokens):
        if token != "character":
            continue
        character = "_".join(tokens[c + 1 :])
        if not character:
            continue
        for j in range(2, c - 1):
            if tokens[j] == "tag" and (when := _timestamp(tokens[j - 1])) is not None:
                chat, tag = "_".join(tokens[: j - 1]), "_".join(tokens[j + 1 : c])
                if chat and tag:
                    return ParsedName(chat, character, when, tag)
        if c >= 2 and (when := _timestamp(tokens[c - 1])) is not None:
            chat = "_".join(tokens[: c - 1])
            if chat:
                return ParsedName(chat, character, when)
    return None


def _parse_legacy(stem: str) -> ParsedName | None:
    for pattern in _LEGACY_PATTERNS:
        match = pattern.fullmatch(stem)
        if match is None:
            continue
        when = _timestamp(match["ts"])
        if when is None:
            continue
        groups = match.groupdict()
        return ParsedName(
            chat=match["chat"],
            character="",
            timestamp=when,
            tag=groups.get("tag"),
            slot=int(match["slot"]),
            legacy=True,
            utc_stamp=pattern is _UTC_LEGACY,
        )
    return None


def parse_save_name(filename: str) -> ParsedName | None:
    """Parse a save's file name (current or legacy format), or ``None`` for anything else."""
    if not filename.endswith(BIN_SUFFIX) or "/" in filename or "\\" in filename:
        return None
    stem = filename[: -len(BIN_SUFFIX)]
    return _parse_current(stem) or _parse_legacy(stem)


def check_filename(filename: str) -> str:
    """Return ``filename`` if it is a plain file name llama-server accepts, else raise.

    Mirrors the server's ``fs_validate_filename``: no separators, no ``..``, no controls or
    reserved characters, at most 255 bytes, no leading/trailing space, no trailing dot.
    """

    def bad(reason: str) -> InvalidSaveName:
        return InvalidSaveName(f"Invalid save file name {filename!r}: {reason}.")

    if not filename:
        raise bad("empty")
    if "/" in filename or "\\" in filename:
        raise bad("path separators are not allowed; give a name inside the save directory")
    if ".." in filename or filename == ".":
        raise bad("'.' and '..' are not allowed")
    if len(filename.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        raise bad(f"longer than {MAX_FILENAME_BYTES} bytes")
    for ch in filename:
        code = ord(ch)
        if (
            code <= 0x1F
            or 0x7F <= code <= 0x9F
            or 0xD800 <= code <= 0xDFFF
            or ch in _SERVER_FORBIDDEN
        ):
            raise bad(f"character {ch!r} is not allowed")
    if filename[0] == " " or filename[-1] in " .":
        raise bad("leading or trailing spaces and trailing dots are not allowed")
    return filename


PRIVATE_PREFIX = ".kvtui-"
"""Files kvtui asks llama-server to write for itself (unverified saves in flight, memory jobs'
borrowed-slot parking, doctor probes). Hidden, never listed, loaded, counted or rotated."""


def private_name(purpose: str) -> str:
    """A fresh private file name in the save directory, e.g. ``.kvtui-job-<hex>.bin``."""
    import uuid

    return f"{PRIVATE_PREFIX}{purpose}-{uuid.uuid4().hex}{BIN_SUFFIX}"


def is_private_name(filename: str) -> bool:
    """True for names made by :func:`private_name` (and their sidecars)."""
    return filename.startswith(PRIVATE_PREFIX)
