"""Recall for one generation request: the cache semantics, the long-term block, the injection.

:meth:`RecallEngine.apply` is what the proxy calls for each generation request (after it knows the
chat, the character and the generation type; before it forwards). Per (chat, character) the
recall is cached, keyed on the user's last message and the chat's length (and the scanned
messages), and decided as the seed's table says:

==============================================  ==========================================
request                                          recall
==============================================  ==========================================
normal (a new user message)                      computed (a new round)
continue                                         reused
regenerate / swipe, the user's message unchanged reused (swipe: or recomputed, by setting)
regenerate after the user edited that message    recomputed (the round is redone)
delete message(s) then regenerate                recomputed (the round is redone)
impersonate, quiet                               the cached recall; never changes it
==============================================  ==========================================

The key, not the generation type, tells an edit from a regenerate: the proxy's wire
classification reports a regenerate as ``swipe`` and an edited-then-regenerated turn as
``normal``, and both come out right. A "normal" request whose key equals the cached one is the
same turn again and reuses it. A *redone* round starts from the sticky records the replaced round
started from, so editing a message and regenerating gives what a first send of the edited
message would have. Without a well-formed macro nothing is computed and the body is untouched.
With ``keep_in_history`` earlier turns' recall stays in a text prompt where it was injected
(:mod:`kvtui.recall.pins`) and the memories it shows are not injected again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvtui.atomic import write_atomic
from kvtui.recall import pins
from kvtui.recall.history import ChatView, chat_view
from kvtui.recall.longterm import build_longterm, longterm_due
from kvtui.recall.macro import replace_macros, scan
from kvtui.recall.memories import Memory, MemorySource
from kvtui.recall.outcome import Decision, RecallOutcome, RecallTelemetry
from kvtui.recall.policy import Action, decide
from kvtui.recall.select import (
    TokenCounter,
    advance,
    chronological,
    estimate_tokens,
    pick,
    rank,
    render_block,
)
from kvtui.recall.settings import RecallSettings
from kvtui.recall.state import CharacterRecall, LongTerm, load_state
from kvtui.slots import CHAT_TURNS, GenType


class RecallEngine:
    """Per-(chat, character) recall state, shared by every request the proxy routes."""

    def __init__(
        self,
        settings: RecallSettings,
        source: MemorySource,
        *,
        state_path: Path | None = None,
        count_tokens: TokenCounter = estimate_tokens,
    ) -> None:
        self.settings = settings
        self.source = source
        self.state_path = state_path
        self.count_tokens = count_tokens
        self.state, self.error = load_state(state_path)
        """The last problem with the state file (unreadable at start, or a failed write)."""
        self._lock = threading.Lock()  # the proxy may call from worker threads
        self._shown: set[str] = set()  # chosen memories the prompt shows already (kept recall)
        self._written: str | None = None

    # -- the proxy's entry points ------------------------------------------------------------

    def apply(
        self,
        body: dict[str, Any],
        *,
        chat: str,
        character: str,
        gen_type: GenType,
        user_name: str | None = None,
        names: Sequence[str] = (),
        client: Mapping[str, Any] | None = None,
        keep: bool = True,
    ) -> RecallOutcome:
        """Replace the recall macros of ``body`` (a generation request without its ``kvtui``
        object, which is passed as ``client``; ``keep=False``: no recall kept in history this
        time). Never raises on bad input or a bad book. It reads the memory book and may write
        the state file: call it off the event loop. ``body`` is never modified."""
        with self._lock:
            return self._apply(
                body,
                chat=chat,
                character=character,
                gen_type=gen_type,
                user_name=user_name,
                names=names,
                client=client,
                keep=keep,
            )

    def _apply(
        self,
        body: dict[str, Any],
        *,
        chat: str,
        character: str,
        gen_type: GenType,
        user_name: str | None,
        names: Sequence[str],
        client: Mapping[str, Any] | None,
        keep: bool,
    ) -> RecallOutcome:
        s = self.settings
        if not s.enabled:
            return RecallOutcome(body, RecallTelemetry("disabled"))
        found = scan(body, (s.macro, s.longterm_macro))
        warnings = tuple(f"malformed recall macro left as written: {m}" for m in found.malformed)
        if not found.found:
            return RecallOutcome(
                body, RecallTelemetry(found.malformed and "malformed" or "none", warnings=warnings)
            )
        memories, error = self._memories(chat)
        if error:
            warnings += (error,)
        depth = max([s.scan_depth, *(m.scan_depth or 0 for m in memories)])
        view = chat_view(
            body,
            macros=(s.macro, s.longterm_macro),
            character=character,
            user_name=user_name,
            names=names,
            client=client,
            scan_depth=depth,
            include_names=s.include_names,
        )
        if view is None:
            return RecallOutcome(body, RecallTelemetry("token_ids", warnings=warnings))
        values: dict[str, str] = {}
        longterm: LongTerm | None = None
        if found.has(s.longterm_macro):
            longterm = self._longterm(chat, memories)
            values[s.longterm_macro] = longterm.text
        exclude = set(longterm.ids) if longterm is not None and s.exclude_longterm else set()
        plan = None
        if s.keep_in_history and keep and found.has(s.macro):
            held = self.state.characters.get((chat, character))
            pinned = held.pins if held is not None else ()
            plan = pins.plan(body, values, s.macro, pinned, s.keep_budget, self.count_tokens)
        self._shown = plan.ids if plan is not None else set()
        decision: Decision | None = None
        reason, text = "", ""
        ids: tuple[str, ...] = ()
        if found.has(s.macro):
            decision, reason, ids, text = self._recall(
                chat, character, gen_type, view, memories, exclude
            )
            if gen_type not in CHAT_TURNS and ids and set(ids) <= self._shown:
                ids, text = (), ""  # an impersonation after the turn: the prompt shows it all
            values[s.macro] = text
        replaced = replace_macros(body, values)
        placed = replaced.placements
        out = replaced.body if replaced.changed else body
        position = placed[s.macro].position if s.macro in placed else None
        chars_after = placed[s.macro].chars_after if s.macro in placed else None
        settled = None
        if text and decision not in (None, Decision.TRANSIENT) and gen_type in CHAT_TURNS:
            settled = replace_macros(body, {**values, s.macro: ""}).body
        plain = (out, position, chars_after, settled)
        if plan is not None:
            kept_body, kept, position = pins.finish(
                plan, out, text, ids, s.keep_budget, self.count_tokens
            )
            as_pin = len(kept) > len(plan.kept)
            if not kept:  # nothing kept (or not one insertion: sent as it is)
                settled = plain[3]
            elif settled and not as_pin:
                settled = pins.with_pins(body, plan.base, plan.kept)
            else:
                settled = None
            out = body if kept_body == body else kept_body
            held = self.state.characters.get((chat, character))
            if held is not None and decision is not Decision.TRANSIENT and gen_type in CHAT_TURNS:
                held.pins = kept
            prompt = out.get("prompt")
            chars_after = None
            if position is not None and isinstance(prompt, str):
                chars_after = len(prompt) - position - len(text)
        telemetry = RecallTelemetry(
            "found",
            decision,
            reason,
            ids,
            chars=len(text),
            position=position,
            chars_after=chars_after,
            changed=self._note_injected(chat, character, text) if decision else None,
            longterm_batch=longterm.batch if longterm else None,
            longterm_chars=len(longterm.text) if longterm else 0,
            longterm_position=(
                placed[s.longterm_macro].position if s.longterm_macro in placed else None
            ),
            longterm_changed=self._note_longterm(chat, character, longterm),
            key_source=view.source.value,
            warnings=warnings,
        )
        self._save()
        fallback = None
        if plan is not None and plan.kept and out is not plain[0] and found.has(s.macro):
            key = (chat, character)
            fallback = self._alone(body, values, key, view, memories, exclude, telemetry)
        return RecallOutcome(out, telemetry, values, text, settled, fallback)

    def _alone(
        self,
        body: dict[str, Any],
        values: dict[str, str],
        key: tuple[str, str],
        view: ChatView,
        memories: Sequence[Memory],
        exclude: set[str],
        telemetry: RecallTelemetry,
    ) -> RecallOutcome:
        """This turn's recall as it is without earlier turns' kept recall: chosen from the same
        round with nothing counted as shown (no state changes)."""
        s, state = self.settings, self.state.characters.get(key)
        self._shown = set()
        sticky, round_no = (state.sticky_before, state.round) if state else ({}, 1)
        ids, text = self._compute(view, memories, exclude, sticky, round_no)
        alone = {**values, s.macro: text}
        replaced = replace_macros(body, alone)
        placed = replaced.placements.get(s.macro)
        settled = replace_macros(body, {**values, s.macro: ""}).body if text else None
        told = replace(
            telemetry,
            memory_ids=ids,
            chars=len(text),
            position=placed.position if placed else None,
            chars_after=placed.chars_after if placed else None,
        )
        sent = replaced.body if replaced.changed else body
        return RecallOutcome(sent, told, alone, text, settled)

    def note_event(self, chat: str, kind: str, character: str | None = None) -> None:
        """A companion-extension event (``POST /kvtui/v1/event``): an edited or deleted message
        makes the chat's cached recalls stale, so the next regenerate recomputes."""
        if kind not in ("message_edited", "message_deleted"):
            return
        why = "a message was edited" if kind == "message_edited" else "a message was deleted"
        with self._lock:
            for (c, ch), value in self.state.characters.items():
                if c == chat and (character is None or ch == character) and value.key is not None:
                    value.stale = why + " (reported by the extension)"
            self._save()

    def drop_pins(self, chat: str, character: str, sent: RecallOutcome | None = None) -> None:
        """Forget the recall kept in a character's prompt (it was sent without it: ``sent``,
        the :attr:`RecallOutcome.fallback`, whose recall is then the turn's cached one, so a
        swipe reuses it); the next turns keep their recall afresh."""
        with self._lock:
            held = self.state.characters.get((chat, character))
            if held is None:
                return
            held.pins = ()
            if sent is not None and held.text != sent.text:
                held.text, held.ids = sent.text, sent.telemetry.memory_ids
            self._save()

    def refresh_longterm(self, chat: str) -> int:
        """Rebuild a chat's long-term block now ("on request"); returns its new batch number."""
        with self._lock:
            memories, _error = self._memories(chat)
            old = self.state.chat_longterm(chat)
            block = build_longterm(memories, self.settings, self.count_tokens, old)
            self.state.put_longterm(chat, block)
            self._save()
            return block.batch

    def cached(self, chat: str, character: str) -> CharacterRecall | None:
        """The cached recall of a (chat, character), for the dashboard and ``kvtui stats``."""
        return self.state.characters.get((chat, character))

    # -- internals -------------------------------------------------------------------------

    def _memories(self, chat: str) -> tuple[list[Memory], str | None]:
        try:
            memories = self.source.memories(chat)
        except Exception as err:  # a broken source must never fail a generation
            return [], f"Could not read the memories of {chat}: {err!r}"
        return memories, getattr(self.source, "last_error", None)

    def _longterm(self, chat: str, memories: Sequence[Memory]) -> LongTerm:
        old = self.state.chat_longterm(chat)
        if old is not None and not longterm_due(old, memories, self.settings):
            return old
        block = build_longterm(memories, self.settings, self.count_tokens, old)
        self.state.put_longterm(chat, block)
        return block

    def _recall(
        self,
        chat: str,
        character: str,
        gen_type: GenType,
        view: ChatView,
        memories: Sequence[Memory],
        exclude: set[str],
    ) -> tuple[Decision, str, tuple[str, ...], str]:
        state = self.state.character(chat, character)
        action, reason = decide(state, view.key, gen_type, self.settings.swipe_policy)
        if action is Action.REUSE and state is not None:
            return Decision.REUSED, reason, state.ids, state.text
        if action is Action.REDO and state is not None:
            before = state.sticky_before
            ids, text = self._compute(view, memories, exclude, before, state.round)
            self.state.put(
                chat,
                character,
                replace(
                    state,
                    key=view.key,
                    text=text,
                    ids=ids,
                    sticky=advance(before, ids, state.round),
                    stale=None,
                ),
            )
            return Decision.RECOMPUTED, reason, ids, text
        sticky = dict(state.sticky) if state else {}
        round_no = (state.round if state else 0) + 1
        ids, text = self._compute(view, memories, exclude, sticky, round_no)
        if action is Action.TRANSIENT:
            return Decision.TRANSIENT, reason, ids, text
        last = state.last_injected if state else None
        after = advance(sticky, ids, round_no)
        recall = CharacterRecall(round_no, view.key, text, ids, after, sticky, None, last)
        self.state.put(chat, character, recall)
        return Decision.COMPUTED, reason, ids, text

    def _compute(
        self,
        view: ChatView,
        memories: Sequence[Memory],
        exclude: set[str],
        sticky: Mapping[str, Any],
        round_no: int,
    ) -> tuple[tuple[str, ...], str]:
        s = self.settings
        window = view.scan_window(
            max([s.scan_depth, *(m.scan_depth or 0 for m in memories)]), s.include_names
        )
        ranked = rank(memories, window, s, sticky, round_no, exclude)
        chosen = chronological(pick(ranked, s, self.count_tokens))
        chosen = [m for m in chosen if m.id not in self._shown]  # kept in the prompt already
        return tuple(m.id for m in chosen), render_block(chosen, s)

    def _note_injected(self, chat: str, character: str, text: str) -> bool | None:
        state = self.state.characters.get((chat, character))
        if state is None:
            return None
        changed = state.last_injected is not None and state.last_injected != text
        state.last_injected = text
        return changed

    def _note_longterm(self, chat: str, character: str, block: LongTerm | None) -> bool | None:
        if block is None:
            return None
        last = block.last_injected.get(character)
        block.last_injected[character] = block.text
        return last is not None and last != block.text

    def _save(self) -> None:
        """Write the state file when it changed (a reused recall writes nothing)."""
        if self.state_path is None:
            return
        text = json.dumps(self.state.to_json(), ensure_ascii=False, sort_keys=True)
        if text == self._written:
            return
        try:
            write_atomic(self.state_path, text)
            self._written = text
        except OSError as err:
            self.error = f"Could not write the recall state {self.state_path}: {err}"
