"""The warmth ledger: the component the proxy's router calls at two points of each generation.

1. :meth:`WarmthLedger.begin` when a generation is routed, with a :class:`TurnDecision` (who,
   which slot, what was restored or evicted, restart or chat switch since the character's last
   turn, its previous prompt). Synchronous and cheap: it only remembers.
2. :meth:`WarmthLedger.finish` when its reply ends, with the final reply's ``timings`` and any
   disk bytes the turn's bookkeeping wrote (an autosave). It schedules the accounting as a task
   and returns at once: the split into new and lost tokens (:mod:`kvtui.warmth.accounting`), the
   server's ``/tokenize`` for an early change's position, the append to ``turns.jsonl`` in a
   worker thread. Tasks run one at a time in turn order; :meth:`drain` waits for them.

It also keeps the newest records in memory (:meth:`records`, :meth:`slots`, :meth:`summary`
for the dashboard) and a model of llama-server's host-memory prompt cache for the policy
(:meth:`ram_cache_holds`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kvtui.warmth.accounting import messages_between, split_turn
from kvtui.warmth.log import TurnLog, turns_path
from kvtui.warmth.model import (
    UNSURE_SOURCES,
    Reason,
    SessionSummary,
    SlotWarmth,
    TurnDecision,
    TurnRecord,
)
from kvtui.warmth.policy import RamCacheModel, WarmthPolicy
from kvtui.warmth.priors import Prior, matching_extent, similar_prior
from kvtui.warmth.ramcache import RamCacheInfo
from kvtui.warmth.recallcost import recall_cost
from kvtui.warmth.summary import slot_warmth, summarize

Tokenize = Callable[[str], Awaitable[list[int]]]
Key = tuple[str, str]
_MEMORY = 128
_SESSION = 50_000
_EXTENTS = 64  # a character's last turns whose size a restored save's token count is matched to
_SIDE_TURNS = frozenset({"quiet", "impersonate"})  # not the character's chat: not remembered


@dataclass(frozen=True)
class TurnTicket:
    """What :meth:`WarmthLedger.begin` returns; hand it to :meth:`WarmthLedger.finish`."""

    decision: TurnDecision
    current: Prior | None
    previous: Prior | None
    candidates: tuple[Prior, ...]  # an unsure identity's possible earlier selves
    begun: datetime = field(default_factory=lambda: datetime.now(UTC))
    recall: Mapping[str, Any] | None = None
    """Recall's telemetry (``kvtui.recall.telemetry.turn_entry``), booked in the record with
    its cost: ``span`` / ``previous_span`` (characters of the injection in this prompt and the
    previous one) become ``position``, ``tokens``, ``lost_tokens`` and ``cost_tokens``."""


class WarmthLedger:
    """Per-turn accounting for one proxy session (see the module docstring).

    ``tokenize`` is ``LlamaClient.tokenize``-like (text → token ids, BOS included when
    ``add_special``); without it early-change positions are estimated from character counts.
    ``state_dir=None`` keeps records in memory only. ``saved_chars`` gives the length of the
    prompt a save file holds (blocking; run in a worker thread), so a loss to an older save
    says how many messages behind it was.
    """

    def __init__(
        self,
        state_dir: Path | None,
        *,
        tokenize: Callable[..., Awaitable[list[int]]] | None = None,
        policy: WarmthPolicy | None = None,
        ring: int = 1000,
        max_lines: int | None = None,
        on_error: Callable[[str], None] | None = None,
        saved_chars: Callable[[str], int | None] | None = None,
    ) -> None:
        self.log = (
            TurnLog(turns_path(state_dir), **({"max_lines": max_lines} if max_lines else {}))
            if state_dir is not None
            else None
        )
        self.policy = policy or WarmthPolicy()
        self._tokenize = tokenize
        self._saved_chars = saved_chars
        self._on_error = on_error
        self._ring: deque[TurnRecord] = deque(maxlen=max(1, ring))
        self._session: deque[TurnRecord] = deque(maxlen=_SESSION)
        self._memory: OrderedDict[Key, Prior] = OrderedDict()
        self._occupant: dict[int, Key] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._order = asyncio.Lock()
        self._flags: dict[Key, set[str]] = {}
        self._extents: dict[Key, deque[tuple[int, int]]] = {}  # (prompt chars, tokens held)
        self.ram: RamCacheInfo | None = None
        self.ram_model = RamCacheModel(None)

    # -- the RAM-cache model ----------------------------------------------------------------

    def configure_ram_cache(
        self, info: RamCacheInfo | None, *, bytes_per_token: float, n_ctx_total: int
    ) -> None:
        """What :func:`detect_ram_cache` found; sizes the model of the server's memory."""
        self.ram = info
        capacity = info.capacity_tokens(bytes_per_token, n_ctx_total) if info else 0
        self.ram_model.capacity = capacity
        if capacity == 0:
            self.ram_model.clear()

    def ram_cache_holds(self, chat: str, character: str) -> int | None:
        """Tokens of the character's state the server's memory likely holds, or ``None``."""
        if self.ram is None or not self.ram.enabled:
            return None
        return self.ram_model.holds((chat, character))

    def note_server_restart(self) -> None:
        """llama-server restarted: its slots and its memory are empty. Every character's next
        turn is marked ``server_restarted``."""
        self.ram_model.clear()
        self._occupant.clear()
        self._flag_all("server_restarted")

    def note_chat_switch(self) -> None:
        """A chat switch erased the slots: every character's next turn is ``chat_switched``."""
        self.note_slots_erased()
        self._flag_all("chat_switched")

    def note_slots_erased(self, slots: list[int] | None = None) -> None:
        """kvtui erased slots (a chat switch, a clear): their states went nowhere."""
        for slot in list(self._occupant) if slots is None else slots:
            self._occupant.pop(slot, None)

    def note_evicted(self, chat: str, character: str, *, saved: bool) -> None:
        """kvtui evicted a character; without a save its next turn is ``evicted_unsaved``."""
        flags = self._flags.setdefault((chat, character), set())
        if saved:
            flags.discard("evicted_unsaved")
        else:
            flags.add("evicted_unsaved")

    def _flag_all(self, flag: str) -> None:
        for key in self._memory:
            self._flags.setdefault(key, set()).add(flag)

    # -- the two calls ----------------------------------------------------------------------

    def begin(self, decision: TurnDecision) -> TurnTicket:
        """A generation was routed. Cheap and synchronous. Facts noted since the character's
        last turn (:meth:`note_server_restart`, :meth:`note_chat_switch`,
        :meth:`note_evicted`) are added to ``decision``."""
        key = (decision.chat, decision.character)
        flags = self._flags.pop(key, set())
        if flags:
            decision = replace(
                decision,
                server_restarted=decision.server_restarted or "server_restarted" in flags,
                chat_switched=decision.chat_switched or "chat_switched" in flags,
                evicted_unsaved=decision.evicted_unsaved or "evicted_unsaved" in flags,
            )
        remembered = self._memory.get(key)
        previous: Prior | None = None
        if decision.previous_prompt is not None:
            same = remembered is not None and remembered.prompt == decision.previous_prompt
            previous = remembered if same else Prior(decision.previous_prompt)
        elif remembered is not None:
            previous = remembered
        candidates: tuple[Prior, ...] = ()
        if previous is None and decision.prompt is not None and decision.source in UNSURE_SOURCES:
            candidates = tuple(self._memory.values())  # searched off the hot path
        current = Prior(decision.prompt) if decision.prompt is not None else None
        if current is not None and decision.gen_type not in _SIDE_TURNS:
            self._memory.pop(key, None)
            self._memory[key] = current
            while len(self._memory) > _MEMORY:
                gone, _ = self._memory.popitem(last=False)
                self._extents.pop(gone, None)
        self._track_slot(decision, key)
        return TurnTicket(decision, current, previous, candidates)

    def finish(
        self,
        ticket: TurnTicket,
        timings: Mapping[str, Any] | None,
        *,
        disk_write_bytes: int = 0,
        disk_write_tokens: int = 0,
    ) -> asyncio.Task[None] | None:
        """The reply ended: account for it in the background. ``timings`` is the final
        reply's ``timings`` object; without ``prompt_n``/``cache_n`` nothing is recorded."""
        if not isinstance(timings, Mapping):
            return None
        prompt_n, cache_n = timings.get("prompt_n"), timings.get("cache_n")
        if not isinstance(prompt_n, int) or not isinstance(cache_n, int):
            return None
        task = asyncio.get_running_loop().create_task(
            self._account(ticket, dict(timings), disk_write_bytes, disk_write_tokens)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def drain(self) -> None:
        """Wait until every scheduled accounting is done (and written)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        await self.drain()

    # -- what the dashboard reads -----------------------------------------------------------

    def load(self, records: Iterable[TurnRecord], *, session: bool = False) -> None:
        """Take records read back from ``turns.jsonl`` (each slot's last turn after a restart
        of kvtui); with ``session`` they count in this session's totals too."""
        for record in records:
            self._ring.append(record)
            if session:
                self._session.append(record)

    def records(self) -> tuple[TurnRecord, ...]:
        return tuple(self._ring)

    def slots(self) -> tuple[SlotWarmth, ...]:
        return slot_warmth(self._ring)

    def summary(self) -> SessionSummary:
        """Totals of this session (its newest 50,000 turns)."""
        return summarize(
            tuple(self._session),
            real_model_bytes_per_token=self.policy.real_model_bytes_per_token,
            disk_mb_per_second=self.policy.disk_mb_per_second,
        )

    # -- inside -----------------------------------------------------------------------------

    def _track_slot(self, decision: TurnDecision, key: Key) -> None:
        slot = decision.slot
        if slot is None:
            return
        occupant = self._occupant.get(slot)
        if occupant is not None and occupant != key and not decision.restored:
            held = self._memory.get(occupant)
            if held is not None and held.extent:
                self.ram_model.push(occupant, held.extent)  # the server moves it to memory
        if occupant != key and not decision.restored:
            self.ram_model.take(key)  # ... and brings this one back when it has it
        for other, who in list(self._occupant.items()):
            if who == key and other != slot:
                del self._occupant[other]
        self._occupant[slot] = key

    async def _count(self, text: str) -> int | None:
        if self._tokenize is None:
            return None
        try:
            return len(await self._tokenize(text, add_special=True))
        except Exception:  # the tokenizer is optional: estimate instead
            return None

    async def _account(
        self, ticket: TurnTicket, timings: dict[str, Any], written: int, written_tokens: int
    ) -> None:
        async with self._order:
            try:
                record = await self._record(ticket, timings, written, written_tokens)
            except Exception as err:  # accounting must never disturb the proxy
                self._error(f"Could not account for a turn of {ticket.decision.character}: {err!r}")
                return
            await self._keep(record)

    async def _keep(self, record: TurnRecord) -> None:
        """The one place a record is kept: in memory for the dashboard, then appended to
        ``turns.jsonl`` in a worker thread."""
        self._ring.append(record)
        self._session.append(record)
        if self.log is not None:
            try:
                await asyncio.to_thread(self.log.append, [record])
            except OSError as err:
                self._error(f"Could not write {self.log.path}: {err}")

    async def _record(
        self, ticket: TurnTicket, timings: dict[str, Any], written: int, written_tokens: int
    ) -> TurnRecord:
        d = ticket.decision
        prompt_n, cache_n = int(timings["prompt_n"]), int(timings["cache_n"])
        predicted = timings.get("predicted_n")
        previous, similar = ticket.previous, False
        if previous is None and ticket.candidates and d.prompt is not None:
            previous = similar_prior(d.prompt, ticket.candidates)
            similar = previous is not None
        split = await split_turn(
            d,
            prompt_n,
            cache_n,
            previous=previous.prompt if previous else None,
            previous_tokens=previous.tokens if previous else None,
            count=self._count,
            similar=similar,
        )
        if ticket.current is not None:
            ticket.current.tokens = prompt_n + cache_n
            extra = predicted if isinstance(predicted, int) else 0
            ticket.current.extent = prompt_n + cache_n + extra
            if d.gen_type not in _SIDE_TURNS:
                key = (d.chat, d.character)
                seen = self._extents.setdefault(key, deque(maxlen=_EXTENTS))
                seen.append((len(ticket.current.prompt), ticket.current.extent))
        prompt_ms = timings.get("prompt_ms")
        behind = None
        if split.losses.get(Reason.OLDER_SAVE.value) and previous is not None:
            behind = await self._behind(d, previous.prompt, split.first_diff, prompt_n + cache_n)
        return TurnRecord(
            ts=ticket.begun.isoformat(),
            chat=d.chat,
            chat_title=d.chat_title,
            character=d.character,
            source=d.source,
            gen_type=d.gen_type,
            slot=d.slot,
            restored=d.restored,
            prompt_n=prompt_n,
            cache_n=cache_n,
            new_tokens=split.new_tokens,
            lost_tokens=split.lost_tokens,
            reason=split.reason,
            first_diff=split.first_diff,
            disk_read_bytes=d.disk_read_bytes,
            disk_write_bytes=d.disk_write_bytes + written,
            first_diff_tokens=split.first_diff_tokens,
            losses=split.losses,
            prompt_ms=float(prompt_ms) if isinstance(prompt_ms, int | float) else None,
            predicted_n=predicted if isinstance(predicted, int) else None,
            restored_tokens=d.restored_tokens,
            disk_write_tokens=d.disk_write_tokens + written_tokens,
            estimated=split.estimated,
            known_extent=d.known_extent,
            behind_messages=behind,
            recall=await recall_cost(
                ticket.recall, split, d.prompt, prompt_n + cache_n, self._tokenize
            ),
        )

    async def _behind(
        self, d: TurnDecision, previous: str, first_diff: int | None, total: int
    ) -> int | None:
        """Messages between the end of the restored save's prompt and what the cache held."""
        prompt = d.prompt
        if prompt is None or d.restored is None:
            return None
        chars: int | None = None
        if d.restored_tokens is not None:
            chars = matching_extent(self._extents.get((d.chat, d.character), ()), d.restored_tokens)
        if chars is None and self._saved_chars is not None:
            with contextlib.suppress(Exception):
                chars = await asyncio.to_thread(self._saved_chars, d.restored)
        if chars is None and d.restored_tokens is not None and total:
            chars = round(len(prompt) * d.restored_tokens / total)  # estimated from its tokens
        if chars is None:
            return None
        end = first_diff if first_diff is not None else len(previous)
        return messages_between(prompt, chars, min(end, len(previous)))

    def _error(self, message: str) -> None:
        if self._on_error is not None:
            with contextlib.suppress(Exception):
                self._on_error(message)
