"""Saves written the KV Cache Manager extension's way are found under the real chat and member
and restored by autoload (its collapsed ASCII names, local-time stamps)."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest

from kvtui.embedded.server import EmbeddedServer
from kvtui.service import KvService
from kvtui.settings import load_settings
from kvtui.sillytavern.sample import copy_sample
from kvtui.slots import GenType

pytestmark = pytest.mark.server

GROUP_CHAT = "2026-05-03@19h02m11s004ms"


def collapse(text: str) -> str:
    """The extension's normalisation (``utils/utils.js``)."""
    return re.sub(r"[^a-zA-Z0-9_-]", "_", text)


async def test_an_extension_save_is_listed_under_its_chat_and_autoloads(
    clean_server: EmbeddedServer, tmp_path: Path
) -> None:
    st_dir = copy_sample(tmp_path / "data")
    settings = load_settings(
        tmp_path / "config.toml",
        server_url=clean_server.url,
        save_dir=clean_server.save_dir,
        st_dir=st_dir,
        state_dir=tmp_path / "state",
    )
    stamp = datetime.now().strftime("%Y%m%d%H%M%S")  # the extension writes local time
    name = f"{collapse(GROUP_CHAT)}_{stamp}_character_{collapse('Kael')}.bin"
    async with KvService(settings) as service:
        await service.connect()
        await service.complete("Alex: Kael, how far is the bridge?\nKael:", slot=0, n_predict=4)
        saved = await service.client.save(0, name)  # as the extension's server plugin does
        assert saved.n_saved > 0
        await service.erase(0)
    async with KvService(settings) as service:  # a new kvtui, as after a migration
        store = service.require_store()
        entry = store.get(name)
        assert entry is not None and entry.chat == GROUP_CHAT and entry.character == "Kael"
        # Read as local time: the same wall-clock stamp the extension wrote.
        assert entry.timestamp.astimezone().strftime("%Y%m%d%H%M%S") == stamp
        await service.connect()
        decision = await service.route(GROUP_CHAT, "Kael", GenType.NORMAL)
        assert decision.restored is not None and decision.restored.filename == name
        assert decision.restored.n_restored == saved.n_saved
