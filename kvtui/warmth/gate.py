"""The RAM-aware policy wired into automatic mode: ``KvService.use_cache_policy(WarmthGate(...))``.

:class:`WarmthGate` is the service's ``CachePolicy`` (structurally: ``skip_restore`` and
``save_choice``), built from the settings ``skip_restore_when_ram_cached`` and
``save_when_protective`` (both off by default: then it never skips anything and never
touches the server). It decides with :mod:`kvtui.warmth.policy` and the ledger's model of
llama-server's host-memory prompt cache, which it sizes the first time it is needed
(:func:`~kvtui.warmth.ramcache.detect_ram_cache`: the server's command line when it runs here,
else a three-prompt probe in a free slot). It is also where the proxy notices, before each
route, that the server restarted or a chat switch released the slots (:meth:`sync`), so a
restart empties the model before the next restore is decided.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from kvtui.events import Kind
from kvtui.service import ConnectionState
from kvtui.warmth.bridge import bytes_per_token
from kvtui.warmth.ledger import WarmthLedger
from kvtui.warmth.policy import WarmthPolicy, should_restore_from_disk, should_save
from kvtui.warmth.ramcache import RamCacheInfo, detect_ram_cache, local_server_process
from kvtui.warmth.summary import prefill_speed

if TYPE_CHECKING:
    from kvtui.service import KvService
    from kvtui.slots import SlotRecord

Key = tuple[str, str]


class WarmthGate:
    """The policy automatic mode asks before a restore or a save (see the module docstring)."""

    def __init__(self, service: KvService, ledger: WarmthLedger) -> None:
        self.service = service
        self.ledger = ledger
        self._seen = service.losses_seen
        self._relied: set[Key] = set()
        self._detected = False
        self._bytes_per_token: float | None = None

    @property
    def policy(self) -> WarmthPolicy:
        """Read from the settings each time: the settings form applies to the next turn."""
        return WarmthPolicy.from_settings(self.service.settings)

    def sync(self) -> None:
        """Tell the ledger of a server restart or a chat switch seen since the last call."""
        if self.service.state is not ConnectionState.CONNECTED:
            # The last poll failed (a restart's first poll can): what memory holds is unknown.
            self.ledger.ram_model.clear()
        restarts, clears = self.service.losses_seen
        if restarts > self._seen[0]:
            self.ledger.note_server_restart()
        if clears > self._seen[1]:
            self.ledger.note_chat_switch()
        self._seen = (restarts, clears)

    def relied(self, chat: str, character: str) -> bool:
        """Whether the last restore of this character was left to the server's memory (once)."""
        key = (chat, character)
        if key in self._relied:
            self._relied.discard(key)
            return True
        return False

    async def skip_restore(self, chat: str, character: str, save_tokens: int | None) -> str | None:
        policy = self.policy
        if not policy.skip_restore_when_ram_cached:
            return None
        self.sync()
        info = await self.ram_cache()
        choice = should_restore_from_disk(
            policy,
            has_save=True,
            save_tokens=save_tokens,
            ram=info,
            ram_tokens=self.ledger.ram_cache_holds(chat, character),
        )
        if choice.act:
            return None
        self._relied.add((chat, character))
        return choice.why

    def save_choice(
        self, record: SlotRecord, *, evicting: bool, due: bool
    ) -> tuple[bool, str] | None:
        policy = self.policy
        if not policy.save_when_protective:
            return None
        tokens = record.tokens or 0
        saved = self._saved_tokens(record)
        if record.messages_since_save > 0:
            saved = min(saved, max(0, tokens - 1))  # a message since: something is unsaved
        choice = should_save(
            policy,
            usage=record.usage,
            tokens=tokens,
            saved_tokens=saved,
            prefill_tokens_per_second=prefill_speed(self.ledger.records()),
            bytes_per_token=self._state_bytes_per_token(),
            autosave_due=due and not evicting,
            evicting=evicting,
        )
        return choice.act, choice.why

    def _state_bytes_per_token(self) -> float:
        if self._bytes_per_token is None:
            self._bytes_per_token = bytes_per_token(self.service.store)
        return self._bytes_per_token

    def _saved_tokens(self, record: SlotRecord) -> int:
        """Tokens in the slot's latest save (or the save it was loaded from); 0 without one."""
        store = self.service.store
        name = record.last_save_file or record.loaded_from
        if store is None or name is None:
            return 0
        try:
            meta = store.read_meta(name)
        except (OSError, ValueError):
            return 0
        return meta.n_saved if meta is not None and meta.n_saved else 0

    async def ram_cache(self) -> RamCacheInfo | None:
        """What the server's prompt cache is, found once (and logged)."""
        if self._detected:
            return self.ledger.ram
        self._detected = True
        service = self.service
        try:
            info = await _detect(service)
            props = service.props
            n_ctx_total = props.n_ctx * props.total_slots if props is not None else 0
            if self._bytes_per_token is None:
                self._bytes_per_token = await asyncio.to_thread(bytes_per_token, service.store)
            self.ledger.configure_ram_cache(
                info, bytes_per_token=self._bytes_per_token, n_ctx_total=n_ctx_total
            )
        except Exception as err:  # noqa: BLE001 - the seed's rules apply then
            service.events.warning(
                Kind.ROUTE, f"Could not tell whether llama-server keeps prompts in memory: {err}"
            )
            return None
        service.events.info(Kind.ROUTE, describe(info))
        return info


async def _detect(service: KvService) -> RamCacheInfo:
    process = await asyncio.to_thread(local_server_process, service.client.base_url)
    avoid = [r.slot for r in service.book.snapshot() if r.occupied]
    # A command line read here is an answer: no probe prefills in a slot.
    probe = process is None
    return await detect_ram_cache(service.client, probe=probe, avoid=avoid)


def describe(info: RamCacheInfo) -> str:
    if info.enabled:
        size = "no size limit" if info.size_mib == -1 else f"{info.size_mib} MiB"
        return (
            f"llama-server keeps evicted prompts in memory ({size}, {info.size_source}): "
            "a character it still holds is not read from disk."
        )
    if info.enabled is None:
        return f"Could not tell whether llama-server keeps prompts in memory ({info.detail})."
    return "llama-server keeps no evicted prompts in memory: saves are restored from disk."
