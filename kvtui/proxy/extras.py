"""What the router does around each routed generation besides routing it: recall, accounting,
and the one decision line per request.

* before forwarding, recall replaces the ``{{kvtui_memories}}`` / ``{{kvtui_longterm}}`` macros
  (:mod:`kvtui.recall`); a request without them goes on byte-for-byte as it came;
* at routing, the warmth ledger begins the turn (:mod:`kvtui.warmth`); at the reply's end it
  splits the prefill into new and lost tokens with a reason, into ``turns.jsonl``;
* at the end, one event (and so one log line of ``kvtui proxy``) says what kvtui decided:
  chat, character, identity source, generation type, slot, restored file, ``prompt_n`` and
  ``cache_n``; the companion extension's status panel learns the last turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from kvtui.events import Kind
from kvtui.proxy.identity import Identity
from kvtui.proxy.recallfit import prompt_fits
from kvtui.proxy.recallrefresh import Refresher
from kvtui.proxy.recallturns import Pending, RecallTurns
from kvtui.recall import RecallEngine, RecallOutcome, RecallSettings
from kvtui.recall.hook import build_engine, inject
from kvtui.service import KvService, RouteDecision, SaveOutcome
from kvtui.slots import CHAT_TURNS, GenType
from kvtui.warmth import TurnTicket, WarmthLedger, WarmthPolicy
from kvtui.warmth.bridge import begin_routed, saved_chars_reader
from kvtui.warmth.gate import WarmthGate

if TYPE_CHECKING:
    from kvtui.proxy.companion import ChatEvent, Companion
    from kvtui.proxy.routing import Routed

log = logging.getLogger("kvtui.proxy")


class RouterExtras:
    """Recall, the warmth ledger and the decision log of one proxy."""

    def __init__(self, service: KvService, companion: Companion) -> None:
        self.service = service
        self.companion = companion
        settings = service.settings
        policy = WarmthPolicy.from_settings(settings)
        self.ledger = WarmthLedger(
            settings.state_dir,
            tokenize=service.tokenize,
            policy=policy,
            saved_chars=saved_chars_reader(service),
            on_error=self._accounting_error,
        )
        self.gate = WarmthGate(service, self.ledger)
        service.use_cache_policy(self.gate)
        self.turns = RecallTurns()
        self.refresher = Refresher(service, self.turns)
        self._pending: dict[tuple[str, str], Pending] = {}  # recall's, until the turn begins
        self._begun: dict[tuple[str, str], RecallOutcome] = {}  # recall's, until the reply
        self._tight: set[tuple[str, str]] = set()  # no room to keep recall in their prompts
        self.recall: RecallEngine | None = None
        try:
            self.recall = build_engine(settings, service.st_data)
        except Exception as err:  # noqa: BLE001 - recall is optional; said once
            service.events.error(Kind.ERROR, f"Recall is off: {err}")
        recall = RecallSettings.from_settings(settings)
        # like the engine, any case: {{KVTUI_Memories}} is the macro too
        self._macros = re.compile(
            f"{re.escape(recall.macro)}|{re.escape(recall.longterm_macro)}", re.I
        )
        companion.listen(self._chat_event)

    def _chat_event(self, event: ChatEvent) -> None:
        """An edit or deletion the extension reported: the chat's cached recalls are stale
        (every character's: each one scans the chat's messages)."""
        if self.recall is not None:
            self.recall.note_event(event.chat, event.type)

    def _accounting_error(self, message: str) -> None:
        self.service.events.error(Kind.ERROR, message)

    async def aclose(self) -> None:
        await self.refresher.drain(timeout=3.0)
        await self.ledger.aclose()

    async def before_forward(
        self,
        body: dict[str, Any],
        identity: Identity,
        gen_type: GenType,
        user: str | None,
        client: object,
    ) -> dict[str, Any]:
        """The body with recall macros replaced (unchanged without them)."""
        key = (identity.chat, identity.character)
        self._pending.pop(key, None)  # one never booked
        if self.recall is None or not self._has_macro(body):
            return body  # nearly every request: no thread hop, no book read
        tight = key in self._tight
        outcome = await inject(
            self.recall,
            body,
            chat=identity.chat,
            character=identity.character,
            gen_type=gen_type,
            user_name=user,
            client=client if isinstance(client, Mapping) else None,
            keep=not tight,
        )
        for warning in outcome.telemetry.warnings:
            self.service.events.warning(Kind.ROUTE, warning)
        if outcome.fallback is not None:
            outcome = await self._fitted(outcome, identity, gen_type)
        elif tight and gen_type in CHAT_TURNS and await self._roomy(outcome.body, key):
            self._tight.discard(key)
            self.service.events.info(
                Kind.ROUTE, f"recall {identity.character}: room again to keep recall in history."
            )
        self._pending[key] = Pending(key, body, outcome)
        return outcome.body

    async def _fitted(
        self, outcome: RecallOutcome, identity: Identity, gen_type: GenType
    ) -> RecallOutcome:
        """``outcome``, or its fallback when the kept recall would overflow the slot (a turn
        then forgets the kept recall; a quiet or impersonate request changes nothing)."""
        key = (identity.chat, identity.character)
        fit = await prompt_fits(self.service, outcome.body, self._chars_per_token(key))
        fallback = outcome.fallback
        if fit.ok or fallback is None or self.recall is None:
            return outcome
        if gen_type in CHAT_TURNS:
            chat, character = key
            await asyncio.to_thread(self.recall.drop_pins, chat, character, fallback)
            self._tight.add(key)  # until a prompt has room for the kept recall again
        size = f"{fit.tokens:,} tok" if fit.tokens is not None else "a size the server did not tell"
        self.service.events.warning(
            Kind.ROUTE,
            f"recall {identity.character}: earlier turns' recall left out of the prompt: with "
            f"it the prompt ({size}) and the reply ({fit.reply:,}) would not fit the slot's "
            f"{fit.limit:,} tokens; none is kept until there is room again.",
        )
        return fallback

    async def _roomy(self, body: Mapping[str, Any], key: tuple[str, str]) -> bool:
        """Whether ``body`` would fit its slot with the whole keep budget on top."""
        spare = self.recall.settings.keep_budget if self.recall is not None else 0
        fit = await prompt_fits(self.service, body, self._chars_per_token(key), spare=spare)
        return fit.ok and fit.limit is not None

    def _chars_per_token(self, key: tuple[str, str]) -> float | None:
        """Characters per token of the character's last prompt (its record in the ledger)."""
        sent = self.turns.last_sent(key)
        for record in reversed(self.ledger.records()):
            if (record.chat, record.character) == key:
                return len(sent) / record.total if sent and record.total > 0 else None
        return None

    def _has_macro(self, body: Mapping[str, Any]) -> bool:
        """Whether ``body`` holds a recall macro: the text is searched, nothing is parsed."""
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            return self._macros.search(prompt) is not None
        messages = body.get("messages")
        if isinstance(messages, list):
            return self._macros.search(json.dumps(messages, ensure_ascii=False)) is not None
        return False

    def begin(
        self,
        decision: RouteDecision | None,
        identity: Identity,
        gen_type: GenType,
        slot: int | None,
        prompt: str | None,
        previous_prompt: str | None,
    ) -> TurnTicket | None:
        """Begin the turn's accounting; never raises (accounting must not block a request)."""
        self.gate.sync()
        key = (identity.chat, identity.character)
        pending = self._pending.pop(key, None)
        self._begun.pop(key, None)
        if pending is not None and pending.outcome.settled is not None:
            self._begun[key] = pending.outcome
        try:
            turn = self.turns.begin(
                (identity.chat, identity.character), gen_type, prompt, previous_prompt, pending
            )
            ticket = begin_routed(
                self.ledger,
                decision,
                chat=identity.chat,
                character=identity.character,
                source=identity.source.value,
                gen_type=gen_type.value,
                prompt=turn.prompt,
                previous_prompt=turn.previous_prompt,
                slot=slot,
                save_dir=self.service.settings.save_dir,
                ram_cache_relied=self.gate.relied(identity.chat, identity.character),
            )
            return replace(ticket, recall=turn.recall) if turn.recall is not None else ticket
        except Exception as err:  # noqa: BLE001 - logged, the request goes on
            self.service.events.error(Kind.ERROR, f"Turn accounting failed: {err!r}")
            return None

    def finish(
        self,
        routed: Routed,
        final: Mapping[str, Any] | None,
        saved: SaveOutcome | None,
        reply: str | None = None,
    ) -> None:
        """The reply ended: account for it and say, in one line, what kvtui decided.
        ``reply``: its text, when it reached the client whole (recall's refresh follows it)."""
        timings = final.get("timings") if final is not None else None
        timings = timings if isinstance(timings, Mapping) else None
        task = None
        if routed.ticket is not None:
            try:
                task = self.ledger.finish(
                    routed.ticket,
                    timings,
                    disk_write_bytes=saved.n_written if saved is not None else 0,
                    disk_write_tokens=saved.n_saved if saved is not None else 0,
                )
            except Exception as err:  # noqa: BLE001 - logged
                self.service.events.error(Kind.ERROR, f"Turn accounting failed: {err!r}")
            if routed.ticket.recall is not None:
                self.turns.report(self.ledger, routed.ticket, task, self.service.events)
        identity = routed.identity
        outcome = self._begun.pop((identity.chat, identity.character), None)
        if outcome is not None and reply is not None and routed.slot is not None:
            if self.recall is not None and self.recall.settings.refresh:
                self.refresher.after_reply(
                    identity.chat, identity.character, routed.slot, outcome, reply
                )
        prompt_n = timings.get("prompt_n") if timings is not None else None
        cache_n = timings.get("cache_n") if timings is not None else None
        if isinstance(prompt_n, int) and isinstance(cache_n, int):
            self.companion.note_turn(identity.chat, identity.character, prompt_n, cache_n)
        restored = routed.ticket.decision.restored if routed.ticket is not None else None
        parts = [
            identity.describe(),
            routed.gen_type.value,
            f"slot {routed.slot}" if routed.slot is not None else "no slot",
        ]
        if restored:
            parts.append(f"restored {restored}")
        if isinstance(prompt_n, int) and isinstance(cache_n, int):
            parts.append(f"{cache_n:,}/{cache_n + prompt_n:,} cached")
        line = " · ".join(parts)
        log.info("route %s", line)
        self.service.events.info(Kind.ROUTE, line)
