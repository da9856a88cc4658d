"""Resolving what a user typed for ``--chat``, and showing chats by title (pure functions)."""

from __future__ import annotations

import pytest

from kvtui.chatref import ChatRefError, KnownChat, chat_label, resolve_chat, with_titles

PARTY = "2026-05-03@19h02m11s004ms"
SOLO = "Seraphina - 2026-05-03@18h45m46s123ms"
SOLO_2 = "Seraphina - 2026-05-04@10h00m00s000ms"
CHATS = [
    KnownChat(PARTY, "Forest Party", f"{PARTY}.jsonl"),
    KnownChat(SOLO, "Seraphina", f"{SOLO}.jsonl"),
    KnownChat(SOLO_2, "Seraphina", f"{SOLO_2}.jsonl"),
    KnownChat("Tavern brawl"),  # only in the save directory
]


def test_id_title_and_file_name_all_name_the_same_chat() -> None:
    assert resolve_chat(PARTY, CHATS) == PARTY
    assert resolve_chat("Forest Party", CHATS) == PARTY
    assert resolve_chat("  forest party ", CHATS) == PARTY
    assert resolve_chat(f"{PARTY}.jsonl", CHATS) == PARTY
    assert resolve_chat(SOLO, CHATS) == SOLO
    assert resolve_chat("Tavern brawl", CHATS) == "Tavern brawl"
    # The way kvtui writes a chat in file names (spaces become underscores) is accepted too.
    assert resolve_chat("Tavern_brawl", CHATS) == "Tavern brawl"


def test_an_ambiguous_title_is_refused_with_the_candidates() -> None:
    with pytest.raises(ChatRefError) as caught:
        resolve_chat("Seraphina", CHATS)
    message = str(caught.value)
    assert "names 2 chats" in message
    assert f"Seraphina ({SOLO})" in message and f"Seraphina ({SOLO_2})" in message
    assert len(caught.value.candidates) == 2


def test_an_unknown_chat_is_refused_with_close_names() -> None:
    with pytest.raises(ChatRefError, match=r"No chat 'Forrest Party'\. Did you mean: Forest"):
        resolve_chat("Forrest Party", CHATS)
    with pytest.raises(ChatRefError, match="Known chats: Forest Party"):
        resolve_chat("zzzz", CHATS)
    with pytest.raises(ChatRefError, match="knows no chats"):
        resolve_chat("anything", [])
    with pytest.raises(ChatRefError, match="empty"):
        resolve_chat("  ", CHATS)


def test_labels_are_titles_with_the_id_only_where_two_chats_share_one() -> None:
    titles = {c.chat_id: c.title for c in CHATS if c.title}
    assert chat_label(PARTY, titles) == "Forest Party"
    assert chat_label(SOLO, titles) == f"Seraphina ({SOLO})"
    assert chat_label("Tavern brawl", titles) == "Tavern brawl"


def test_event_messages_show_titles() -> None:
    titles = {PARTY: "Forest Party", SOLO: "Seraphina"}
    assert with_titles(f"Kael ({PARTY}) → slot 1.", titles) == "Kael (Forest Party) → slot 1."
    assert with_titles(f"Current chat: Forest Party ({PARTY}).", titles) == (
        "Current chat: Forest Party."
    )
    assert with_titles(f"Chat switch {PARTY} → {SOLO}: saved 3", titles) == (
        "Chat switch Forest Party → Seraphina: saved 3"
    )
    assert with_titles("nothing to replace", titles) == "nothing to replace"
