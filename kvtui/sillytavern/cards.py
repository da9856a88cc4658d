"""SillyTavern character cards: read the card JSON out of a PNG, and write small card PNGs.

SillyTavern keeps every character as ``characters/<avatar>.png`` with the card JSON base64-encoded
in PNG text chunks: ``chara`` (V2 JSON) and ``ccv3`` (the same JSON marked as V3). A reader
prefers ``ccv3`` and falls back to ``chara``. V2/V3 fields live under ``data``; the V1 copies at
the top level are used when ``data`` lacks a field. ``chat`` (the character's current chat file
name, without ``.jsonl``) is a SillyTavern-only top-level field.

The writer exists for kvtui's sample data and tests; kvtui never rewrites a user's cards.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvtui.errors import KvtuiError
from kvtui.sillytavern.png import PngError, encode_png, iter_text_chunks

CARD_KEYWORDS = ("ccv3", "chara")  # in order of preference


class CardError(KvtuiError, ValueError):
    """A file that is not a readable character card; the message says why."""


@dataclass(frozen=True)
class Card:
    """The parts of a character card kvtui uses. Text fields are raw (macros not substituted)."""

    name: str
    avatar: str
    """File name in ``characters/`` (e.g. ``Seraphina.png``): the stable key of a character."""
    description: str = ""
    personality: str = ""
    scenario: str = ""
    first_mes: str = ""
    mes_example: str = ""
    system_prompt: str = ""
    post_history_instructions: str = ""
    chat: str | None = None
    """The character's current chat (file name without ``.jsonl``), when set."""
    world: str | None = None
    """The character-bound lorebook name (``data.extensions.world``), when set."""
    alternate_greetings: tuple[str, ...] = ()
    spec: str = ""
    """``chara_card_v3``, ``chara_card_v2`` or empty for a V1 card."""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def card_from_json(obj: Mapping[str, Any], avatar: str) -> Card:
    """Build a ``Card`` from card JSON (V1, V2 or V3) for the avatar file ``avatar``."""
    data_obj = obj.get("data")
    data: Mapping[str, Any] = data_obj if isinstance(data_obj, Mapping) else {}

    def field(key: str) -> str:
        value = data.get(key)
        return value if isinstance(value, str) else _text(obj.get(key))

    extensions = data.get("extensions")
    world = extensions.get("world") if isinstance(extensions, Mapping) else None
    greetings = data.get("alternate_greetings")
    chat = obj.get("chat")
    name = field("name").strip() or Path(avatar).stem
    return Card(
        name=name,
        avatar=avatar,
        description=field("description"),
        personality=field("personality"),
        scenario=field("scenario"),
        first_mes=field("first_mes"),
        mes_example=field("mes_example"),
        system_prompt=field("system_prompt"),
        post_history_instructions=field("post_history_instructions"),
        chat=chat if isinstance(chat, str) and chat else None,
        world=world if isinstance(world, str) and world else None,
        alternate_greetings=tuple(
            g for g in (greetings if isinstance(greetings, list) else []) if isinstance(g, str)
        ),
        spec=_text(obj.get("spec")),
    )


def _decode_card_text(text: str) -> dict[str, Any]:
    try:
        raw = base64.b64decode(text.strip())
        obj = json.loads(raw.decode("utf-8-sig"))
    except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CardError(f"card text is not base64 JSON: {err}") from err
    if not isinstance(obj, dict):
        raise CardError("card JSON is not an object")
    return obj


def read_card_json(path: Path) -> dict[str, Any]:
    """The card JSON stored in the PNG at ``path`` (``ccv3`` preferred over ``chara``).

    A damaged ``ccv3`` falls back to ``chara``. Raises ``CardError`` (or ``OSError``).
    """
    found: dict[str, str] = {}
    with path.open("rb") as stream:
        try:
            for keyword, text in iter_text_chunks(stream):
                if keyword.lower() in CARD_KEYWORDS:
                    found.setdefault(keyword.lower(), text)
        except PngError as err:
            raise CardError(f"{path.name}: {err}") from err
    errors: list[str] = []
    for keyword in CARD_KEYWORDS:
        if keyword in found:
            try:
                return _decode_card_text(found[keyword])
            except CardError as err:
                errors.append(f"{keyword}: {err}")
    if errors:
        raise CardError(f"{path.name}: " + "; ".join(errors))
    raise CardError(f"{path.name}: no chara or ccv3 text chunk")


def read_card(path: Path) -> Card:
    """The ``Card`` in the PNG at ``path``. Raises ``CardError`` or ``OSError``."""
    return card_from_json(read_card_json(path), path.name)


def build_card_json(
    name: str,
    *,
    description: str = "",
    personality: str = "",
    scenario: str = "",
    first_mes: str = "",
    mes_example: str = "",
    system_prompt: str = "",
    chat: str = "",
    world: str = "",
    alternate_greetings: Iterable[str] = (),
    create_date: str = "2026-05-01T10:02:11.004Z",
) -> dict[str, Any]:
    """Card JSON in the V2 shape SillyTavern writes to ``chara`` (V1 copies at the top level)."""
    extensions: dict[str, Any] = {
        "talkativeness": "0.5",
        "fav": False,
        "world": world,
        "depth_prompt": {"prompt": "", "depth": 4, "role": "system"},
    }
    return {
        "name": name,
        "description": description,
        "personality": personality,
        "scenario": scenario,
        "first_mes": first_mes,
        "mes_example": mes_example,
        "creatorcomment": "",
        "avatar": "none",
        "chat": chat,
        "talkativeness": "0.5",
        "fav": False,
        "tags": [],
        "create_date": create_date,
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": name,
            "description": description,
            "personality": personality,
            "scenario": scenario,
            "first_mes": first_mes,
            "mes_example": mes_example,
            "creator_notes": "",
            "system_prompt": system_prompt,
            "post_history_instructions": "",
            "tags": [],
            "creator": "",
            "character_version": "",
            "alternate_greetings": list(alternate_greetings),
            "extensions": extensions,
        },
    }


def encode_card_text(card_json: Mapping[str, Any]) -> str:
    """Base64 of the UTF-8 JSON, as SillyTavern stores it in a text chunk."""
    raw = json.dumps(card_json, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return base64.b64encode(raw).decode("ascii")


def _avatar_pixels(seed: str, size: int) -> list[bytes]:
    """A simple deterministic portrait: a coloured background and a lighter head and shoulders."""
    digest = hashlib.sha256(seed.encode("utf-8")).digest()
    bg = (40 + digest[0] % 120, 40 + digest[1] % 120, 40 + digest[2] % 120)
    fg = tuple(min(255, c + 90) for c in bg)
    rows: list[bytes] = []
    cx, head_y, head_r = size / 2, size * 0.38, size * 0.2
    for y in range(size):
        row = bytearray()
        for x in range(size):
            in_head = (x - cx) ** 2 + (y - head_y) ** 2 <= head_r**2
            in_body = y >= size * 0.65 and (x - cx) ** 2 + (y - size) ** 2 <= (size * 0.38) ** 2
            row += bytes(fg if in_head or in_body else bg)
        rows.append(bytes(row))
    return rows


def write_card_png(
    path: Path,
    card_json: Mapping[str, Any],
    *,
    chara: bool = True,
    ccv3: bool = True,
    size: int = 32,
) -> None:
    """Write a small card PNG at ``path`` the way SillyTavern does: ``chara`` then ``ccv3``.

    ``ccv3`` holds the same JSON with ``spec: chara_card_v3`` and ``spec_version: 3.0``. The
    picture is a plain portrait derived from the card name, so the bytes are deterministic.
    """
    text: list[tuple[str, str]] = []
    if chara:
        text.append(("chara", encode_card_text(card_json)))
    if ccv3:
        v3 = dict(card_json)
        v3["spec"] = "chara_card_v3"
        v3["spec_version"] = "3.0"
        text.append(("ccv3", encode_card_text(v3)))
    seed = str(card_json.get("name", path.stem))
    path.write_bytes(encode_png(_avatar_pixels(seed, size), size, text))
