"""The preview state object: accept, edit, retry, cancel, and fixing a failed reply by hand."""

from __future__ import annotations

import pytest

from kvtui.memory.contract import Memory, MemoryReplyError, ReplyCode
from kvtui.memory.preview import Preview, PreviewError, PreviewState

REPLY = '{"title": "Truce", "content": "They agree.", "keywords": ["truce", "roof"]}'
OTHER = '{"title": "Dawn", "content": "They scout.", "keywords": ["K-17"]}'


def test_edit_is_what_accept_returns() -> None:
    preview = Preview()
    preview.offer(REPLY, stop_type="eos")
    assert preview.state is PreviewState.READY
    preview.edit(content="They agree, for now.", keywords=["truce", " ", "Truce", "Bob"])
    memory = preview.accept()
    assert memory == Memory("Truce", "They agree, for now.", ("truce", "Truce", "Bob"))
    assert preview.accepted == memory and preview.edited
    with pytest.raises(PreviewError):
        preview.cancel()


def test_bad_edits_are_refused_and_keep_the_memory() -> None:
    preview = Preview()
    preview.offer(REPLY)
    for change, code in (
        ({"title": " "}, ReplyCode.MISSING_FIELDS_TITLE),
        ({"content": ""}, ReplyCode.MISSING_FIELDS_CONTENT),
        ({"keywords": ["", " "]}, ReplyCode.INVALID_KEYWORDS),
    ):
        with pytest.raises(MemoryReplyError) as caught:
            preview.edit(**change)
        assert caught.value.code is code
    assert preview.memory == Memory("Truce", "They agree.", ("truce", "roof"))


def test_retry_replaces_the_reply() -> None:
    preview = Preview()
    preview.offer(REPLY)
    preview.edit(title="Edited")
    preview.retry()
    with pytest.raises(PreviewError):
        preview.accept()
    preview.offer(OTHER)
    assert preview.attempts == 2 and not preview.edited
    assert preview.accept().title == "Dawn"
    assert preview.history == [REPLY, OTHER]


def test_failed_reply_can_be_fixed_by_hand_or_cancelled() -> None:
    preview = Preview()
    preview.offer('{"title": "Cut', stop_type="limit")
    assert preview.state is PreviewState.FAILED
    assert preview.error is not None and preview.error.code is ReplyCode.TRUNCATED
    assert preview.accepted is None
    with pytest.raises(PreviewError):
        preview.accept()
    with pytest.raises(MemoryReplyError):
        preview.edit_raw("still not json")
    assert preview.edit_raw(OTHER).title == "Dawn"
    preview.cancel()
    assert preview.state.value == "cancelled" and preview.accepted is None


def test_text_preview_for_free_text() -> None:
    from kvtui.memory.preview import TextPreview

    preview = TextPreview()
    preview.offer("<think>plan</think>\n- Alice owes Bob a favour.\n", stop_type="eos")
    assert preview.state is PreviewState.READY and preview.text == "- Alice owes Bob a favour."
    preview.retry()
    preview.offer("   ", stop_type="eos")
    assert preview.state.value == "failed" and preview.error
    preview.retry()
    preview.offer("half a sent", stop_type="limit")
    assert preview.state.value == "ready" and "limit" in (preview.error or "")
    assert preview.edit("- Alice owes Bob.") == "- Alice owes Bob."
    assert preview.accept() == "- Alice owes Bob." and preview.accepted == "- Alice owes Bob."
