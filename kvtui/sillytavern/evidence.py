"""Decide which chat a prompt is for, from the chats it contains and SillyTavern's own state.

The prompt's content comes first: the chat whose latest messages it holds (``ChatIndex.match``).
When several chats hold them equally (a branch and its parent, two chats that are still only
the same greeting), SillyTavern's state breaks the tie: the character's current chat (card
``chat``), the group's ``chat_id``, a chat the proxy was just told was opened, and last the
selected character or group (``settings.json``, saved about a second late). When the content
says nothing, that state alone decides, as a weaker "inferred" answer. When neither can tell,
the answer is "unsure": the router must then neither restore over a live cache nor save under
the guessed chat.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from kvtui.sillytavern.chatindex import ChatMatch, IndexedChat
from kvtui.sillytavern.ststate import SillyTavernState


class ChatSource(StrEnum):
    EVIDENCE = "evidence"  # the prompt holds this chat's latest messages
    INFERRED = "inferred"  # SillyTavern's state says it is open; the prompt did not say
    UNSURE = "unsure"


@dataclass(frozen=True)
class ChatDecision:
    """Which chat a prompt is for, how sure, and why."""

    source: ChatSource
    confidence: float
    """0..1: about 0.9 for an unambiguous content match, 0.5 for state alone, 0 when unsure."""
    reason: str
    chat: IndexedChat | None = None
    match: ChatMatch | None = None
    """The content match for ``chat`` (None when the content did not decide)."""
    candidates: tuple[str, ...] = field(default=())
    """The chat ids that were equally likely (the decided one first, when there is one)."""

    @property
    def chat_id(self) -> str | None:
        return self.chat.ref.chat_id if self.chat is not None else None

    @property
    def sure(self) -> bool:
        return self.source is not ChatSource.UNSURE and self.chat is not None


def _is_current(entry: IndexedChat, current: dict[str, str | None]) -> bool:
    ref = entry.ref
    return ref.chat_id in current and current[ref.chat_id] == ref.group_id


def _is_active(entry: IndexedChat, state: SillyTavernState) -> bool:
    ref = entry.ref
    if ref.group_id is not None:
        return state.active_group == ref.group_id
    return state.active_character is not None and state.active_character == ref.avatar


def _narrow(
    entries: Sequence[IndexedChat], state: SillyTavernState, current: dict[str, str | None]
) -> tuple[list[IndexedChat], str]:
    """The entries left after SillyTavern's state (current chat, then selection) has spoken."""
    pool = list(entries)
    reason = ""
    now = [e for e in pool if _is_current(e, current)]
    if now:
        pool, reason = now, "SillyTavern's current chat"
    if len(pool) > 1:
        active = [e for e in pool if _is_active(e, state)]
        if active:
            pool, reason = active, reason + " and the selected character or group"
    return pool, reason.removeprefix(" and ")


def decide_chat(
    matches: Sequence[ChatMatch],
    state: SillyTavernState,
    chats: Collection[IndexedChat],
    *,
    avatars: Collection[str] | None = None,
    opened: str | None = None,
) -> ChatDecision:
    """The chat a prompt is for.

    ``matches``: ``ChatIndex.match`` of the prompt (for ``avatars`` when the character is known);
    ``chats``: every indexed chat (for the state-only answer); ``opened``: a chat id the proxy
    was told was just opened (the companion extension's ``chat_opened``), which counts as
    current above the cards and groups.
    """
    current = state.current_chats(avatars)
    if opened is not None:
        owner = next((e.ref.group_id for e in chats if e.ref.chat_id == opened), None)
        current[opened] = owner
    plausible = [m for m in matches if m.plausible]
    if plausible:
        best = plausible[0].rank
        tied = [m for m in plausible if m.rank == best]
        ids = tuple(m.chat.ref.chat_id for m in tied)
        if len(tied) == 1:
            entry = tied[0].chat
            sure = _is_current(entry, current) or _is_active(entry, state)
            why = "the prompt holds this chat's latest messages"
            return ChatDecision(
                ChatSource.EVIDENCE, 0.9 if sure else 0.75, why, entry, tied[0], ids
            )
        pool, why = _narrow([m.chat for m in tied], state, current)
        if len(pool) == 1:
            chosen = next(m for m in tied if m.chat is pool[0])
            reason = f"{len(tied)} chats hold the prompt's messages; {why} decides"
            ordered = (chosen.chat.ref.chat_id, *(i for i in ids if i != chosen.chat.ref.chat_id))
            return ChatDecision(ChatSource.EVIDENCE, 0.7, reason, chosen.chat, chosen, ordered)
        reason = f"{len(tied)} chats hold the prompt's latest messages equally"
        return ChatDecision(ChatSource.UNSURE, 0.0, reason, None, None, ids)
    # The content says nothing: SillyTavern's state alone.
    pool_all = [e for e in chats if avatars is None or any(a in e.avatars for a in avatars)]
    options = [e for e in pool_all if _is_current(e, current)]
    if len(options) > 1:
        options = [e for e in options if _is_active(e, state)] or options
    if len(options) == 1:
        reason = "no chat holds the prompt's messages; SillyTavern's current chat"
        return ChatDecision(ChatSource.INFERRED, 0.5, reason, options[0], None, ())
    ids = tuple(e.ref.chat_id for e in options)
    reason = "no chat holds the prompt's messages and SillyTavern's state names " + (
        f"{len(options)} chats" if options else "none"
    )
    return ChatDecision(ChatSource.UNSURE, 0.0, reason, None, None, ids)
