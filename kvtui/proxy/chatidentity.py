"""The identity of a generation request from evidence: which chat, which character, how sure.

:func:`identify` combines the request (its ``kvtui`` object or headers; a text prompt's
``\\nName:`` tail and stop strings; a Chat Completion group's nudge), the SillyTavern chats the
prompt holds (:class:`kvtui.sillytavern.chatindex.ChatIndex`) and SillyTavern's own state
(:func:`kvtui.sillytavern.evidence.decide_chat`). It is pure given a refreshed index: call
``index.refresh()`` first (it stats the data directory and reads what changed), then
:func:`identify` (no file access; well under a millisecond for a 30,000-character prompt).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from kvtui.proxy.gentype import ChatEvidence, request_prompt
from kvtui.proxy.identity import (
    UNKNOWN_CHAT,
    Clue,
    Identity,
    IdentitySource,
    character_clue,
    explicit_identity,
    fingerprint,
    without_kvtui,
)
from kvtui.sillytavern.chatindex import ChatIndex, ChatMatch
from kvtui.sillytavern.evidence import ChatDecision, ChatSource, decide_chat
from kvtui.sillytavern.ststate import SillyTavernState
from kvtui.sillytavern.templates import content_text, nudge_speaker

_SOURCES = {
    ChatSource.EVIDENCE: IdentitySource.EVIDENCE,
    ChatSource.INFERRED: IdentitySource.INFERRED,
    ChatSource.UNSURE: IdentitySource.UNSURE,
}
_WEAK = (Clue.LAST_SPEAKER, Clue.FINGERPRINT)


def chat_evidence(match: ChatMatch, text: str, now: float | None = None) -> ChatEvidence:
    """What a chat's latest messages say about a prompt (``text``), for the generation type."""
    recent = match.chat.recent
    last = recent[-1]
    if last.indexable:
        in_prompt = 0 in match.found
    else:  # too short to index: look for it at the very end of the prompt
        short = last.text.strip()
        in_prompt = bool(short) and short in text[-(len(short) + 300) :]
    unseen = match.unseen
    speakers = [m.name for m in unseen]
    if not in_prompt and not last.indexable:
        speakers.append(last.name)
    return ChatEvidence(
        last_in_prompt=in_prompt,
        last_is_user=last.is_user,
        last_speaker=last.name,
        last_text=last.text,
        unseen_speakers=tuple(dict.fromkeys(speakers)),
        unseen_user=any(m.is_user for m in unseen) or (not in_prompt and last.is_user),
        written_ago=(time.time() if now is None else now) - match.chat.mtime,
        rewritten=match.chat.rewritten,
    )


def _match_text(body: Mapping[str, Any]) -> str:
    prompt = request_prompt({"prompt": body.get("prompt")})
    if prompt is not None:
        return prompt
    messages = body.get("messages")
    if isinstance(messages, list):
        return "\n".join(content_text(m.get("content")) for m in messages if isinstance(m, Mapping))
    return ""


def _request_character(
    body: Mapping[str, Any], state: SillyTavernState, is_chat_completion: bool
) -> tuple[str, Clue] | None:
    """The speaker the request itself names (None when it names nobody)."""
    if is_chat_completion:
        messages = body.get("messages")
        assert isinstance(messages, list)
        names = sorted(set(state.names.values()))
        if found := nudge_speaker(messages, names, state.prompts):
            return found[0], Clue.GROUP_NUDGE
        return None  # one-to-one Chat Completion: no name; the chat decides
    name, clue = character_clue(body, user_names=[state.user_name])
    return None if clue is Clue.FINGERPRINT else (name, clue)


def _member_names(state: SillyTavernState, decision: ChatDecision) -> list[str]:
    entry = decision.chat
    if entry is None:
        return []
    return [state.names.get(a, a.removesuffix(".png")) for a in entry.avatars]


def identify(
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None,
    index: ChatIndex,
    *,
    opened: str | None = None,
    now: float | None = None,
) -> tuple[Identity, dict[str, Any]]:
    """The request's identity and the body to forward (without the ``kvtui`` object).

    ``index`` must have been refreshed for this request. ``opened``: a chat id the proxy was
    told was just opened (companion ``chat_opened`` event), counted as SillyTavern's current
    chat. An ``unsure`` identity has ``chat == UNKNOWN_CHAT`` and lists the equally likely
    chats in ``candidates``.
    """
    forwarded = without_kvtui(body)
    stated = explicit_identity(body, headers)
    if stated.chat is not None and stated.character is not None:
        identity = Identity(
            stated.chat, stated.character, stated.source, stated.avatar, stated.declared,
            clue=Clue.EXPLICIT, group=stated.group, reason="stated by the client",
        )  # fmt: skip
        return identity, forwarded
    state = index.state
    is_cc = body.get("prompt") is None and isinstance(body.get("messages"), list)
    text = _match_text(body)
    found: tuple[str, Clue] | None
    if stated.character is not None:
        found = stated.character, Clue.EXPLICIT
    else:
        found = _request_character(body, state, is_cc)
    avatars: list[str] | None = None
    if stated.avatar is not None:
        avatars = [stated.avatar.rsplit("/", 1)[-1]]
    elif found is not None and found[1] not in _WEAK:
        avatars = state.avatars_named(found[0]) or None
    decision = decide_chat(
        index.match(text, avatars), state, index.chats(), avatars=avatars, opened=opened
    )
    members = _member_names(state, decision)
    if decision.chat is not None and (found is None or found[1] in _WEAK):
        if decision.chat.ref.group_id is None and members:
            found = members[0], Clue.CHAT
        elif members:
            named = character_clue(body, members=members, user_names=[state.user_name])
            found = named if named[1] is not Clue.FINGERPRINT else found
    selected = state.active_character
    if found is None and not decision.sure and selected is not None and selected in state.names:
        found = state.names[selected], Clue.STATE
    chat = stated.chat or decision.chat_id or UNKNOWN_CHAT
    source = stated.source if stated.chat is not None else _SOURCES[decision.source]
    if found is None:
        found = _fingerprint(body), Clue.FINGERPRINT
        if decision.chat is None:
            source = IdentitySource.FINGERPRINT
    entry = decision.chat
    avatar = stated.avatar
    if avatar is None and entry is not None and entry.ref.avatar is not None:
        avatar = entry.ref.avatar
    elif avatar is None and avatars is not None and len(avatars) == 1:
        avatar = avatars[0]
    evidence = chat_evidence(decision.match, text, now) if decision.match is not None else None
    identity = Identity(
        chat=chat,
        character=found[0],
        source=source,
        avatar=avatar,
        declared_type=stated.declared,
        clue=found[1],
        confidence=decision.confidence if stated.chat is None else 1.0,
        group=stated.group or (entry.ref.group_id if entry is not None else None),
        reason=decision.reason,
        candidates=decision.candidates if not decision.sure else (),
        evidence=evidence,
    )
    return identity, forwarded


def refresh_and_identify(
    index: ChatIndex,
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None,
    *,
    opened: str | None = None,
) -> tuple[Identity, dict[str, Any]]:
    """:meth:`ChatIndex.refresh` then :func:`identify`, under the index's lock: the one call a
    proxy makes per request, off the event loop (``await asyncio.to_thread(...)``)."""
    with index.lock:
        index.refresh()
        return identify(body, headers, index, opened=opened)


INLINE_CHATS = 64
"""An index of at most this many chats is refreshed on the event loop (a few stats, well under
a millisecond: less than the hop to a worker thread); a bigger one in a worker thread."""


async def identify_request(
    index: ChatIndex,
    body: Mapping[str, Any],
    headers: Mapping[str, str] | None,
    *,
    opened: str | None = None,
) -> tuple[Identity, dict[str, Any]]:
    """:func:`refresh_and_identify` for a proxy: on the loop when the index is small and its
    lock is free, else off the loop (``asyncio.to_thread``). An index never refreshed yet (its
    first refresh reads every chat) goes to the thread."""
    if 0 < len(index.chats()) <= INLINE_CHATS and index.lock.acquire(blocking=False):
        try:
            index.refresh()
            return identify(body, headers, index, opened=opened)
        finally:
            index.lock.release()
    return await asyncio.to_thread(refresh_and_identify, index, body, headers, opened=opened)


def _fingerprint(body: Mapping[str, Any]) -> str:
    prompt = request_prompt({"prompt": body.get("prompt")})
    if prompt is not None:
        return fingerprint(prompt)
    messages = body.get("messages")
    if isinstance(messages, Sequence) and not isinstance(messages, str):
        return fingerprint(
            "\n".join(
                f"{m.get('role')}: {m.get('content')}" for m in messages if isinstance(m, Mapping)
            )
        )
    raw = body.get("prompt")
    ids = [t for t in raw if isinstance(t, int)] if isinstance(raw, list) else []
    return fingerprint(ids)
