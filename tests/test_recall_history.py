"""The chat inside a request: messages, the user's last message and the recall key."""

from __future__ import annotations

from kvtui.recall.history import Change, KeySource, RecallKey, chat_view, compare, text_hash

MACROS = ("kvtui_memories", "kvtui_longterm")


def test_text_completion_non_instruct() -> None:
    prompt = (
        "Story about Alex and Seraphina.\n***\nAlex: earlier\n***\nSeraphina: Hello.\n"
        "Alex: Where is my sword?\nIt was here.\n{{kvtui_memories}}\nSeraphina:"
    )
    view = chat_view({"prompt": prompt, "stop": ["\nAlex:"]}, macros=MACROS, character="Seraphina")
    assert view is not None and view.source is KeySource.PROMPT
    # the example dialogue before the last chat-start line is not chat; the macro is removed
    assert [(m.speaker, m.text, m.is_user) for m in view.messages] == [
        ("Seraphina", "Hello.", False),
        ("Alex", "Where is my sword?\nIt was here.", True),
    ]
    assert view.key.user_hash == text_hash("Where is my sword?\nIt was here.")
    assert view.key.length == 2
    assert view.scan_window(1, True) == ["Alex: Where is my sword?\nIt was here."]
    assert view.scan_window(5, False) == ["Where is my sword?\nIt was here.", "Hello."]


def test_group_prompt_names_come_from_stop() -> None:
    prompt = "Story\n***\nAlex: Hi all.\nKael: Hey.\nMira: Hello.\nAlex: Ready?\nKael:"
    stop = ["\nAlex:", "\nMira:", "\n***"]
    view = chat_view({"prompt": prompt, "stop": stop}, macros=MACROS, character="Kael",
                     user_name="Alex")  # fmt: skip
    assert view is not None
    assert [m.speaker for m in view.messages] == ["Alex", "Kael", "Mira", "Alex"]
    assert view.key == RecallKey(text_hash("Ready?"), 4, text_hash("Hi all."), view.key.window_hash)


def test_chatml_instruct_with_and_without_names() -> None:
    named = (
        "<|im_start|>system\nStory<|im_end|>\n<|im_start|>user\nAlex: Where is my sword?"
        "<|im_end|>\n<|im_start|>assistant\nSeraphina: Here.<|im_end|>\n<|im_start|>user\n"
        "Alex: Thanks!<|im_end|>\n<|im_start|>assistant\nSeraphina:"
    )
    view = chat_view({"prompt": named, "stop": ["\nAlex:"]}, macros=MACROS, character="Seraphina")
    assert view is not None
    assert [(m.speaker, m.text, m.is_user) for m in view.messages] == [
        ("Alex", "Where is my sword?", True),
        ("Seraphina", "Here.", False),
        ("Alex", "Thanks!", True),
    ]
    bare = (
        "<|im_start|>system\nStory<|im_end|>\n<|im_start|>user\nWhere is my sword?<|im_end|>\n"
        "<|im_start|>assistant\nHere.<|im_end|>\n<|im_start|>user\nThanks!<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    view2 = chat_view({"prompt": bare, "stop": ["<|im_end|>"]}, macros=MACROS)
    assert view2 is not None
    assert [(m.text, m.is_user) for m in view2.messages] == [
        ("Where is my sword?", True),
        ("Here.", False),
        ("Thanks!", True),
    ]
    assert view2.key.user_hash == view.key.user_hash


def test_chat_completion_messages() -> None:
    body = {
        "messages": [
            {"role": "system", "content": "Story"},
            {"role": "system", "name": "example_user", "content": "an example"},
            {"role": "user", "content": "Alex: Hi all."},
            {"role": "assistant", "content": "Mira: Hello."},
            {"role": "user", "content": [{"type": "text", "text": "Alex: Ready?"}]},
            {"role": "system", "content": "[Write the next reply only as Mira.]"},
        ]
    }
    view = chat_view(body, macros=MACROS)
    assert view is not None and view.source is KeySource.MESSAGES
    assert [(m.speaker, m.text) for m in view.messages] == [
        ("Alex", "Hi all."),
        ("Mira", "Hello."),
        ("Alex", "Ready?"),
    ]
    assert view.scan_window(1, True) == ["Alex: Ready?"]


def test_extension_key_and_token_ids() -> None:
    client = {"user_message": {"index": 7, "hash": "abc"}, "source": "extension"}
    view = chat_view({"prompt": "x\nAlex: hi\nS:"}, macros=MACROS, client=client)
    assert view is not None and view.source is KeySource.EXTENSION
    assert (view.key.user_hash, view.key.length) == ("ext:abc", 8)
    assert chat_view({"prompt": [1, 2, 3]}, macros=MACROS) is None


def test_no_user_message_falls_back_to_the_history_window() -> None:
    view = chat_view({"prompt": "Just a story with no chat.\nSeraphina:"}, macros=MACROS,
                     character="Seraphina")  # fmt: skip
    assert view is not None and view.key.user_hash.startswith("window:")


def test_compare() -> None:
    old = RecallKey("u2", 4, "u1", "w")
    assert compare(old, RecallKey("u2", 4, "u1", "w")) is Change.SAME
    assert compare(old, RecallKey("u2", 4, "u1", "w2")) is Change.SCANNED_EDITED
    assert compare(old, RecallKey("u3", 6, "u2", "x")) is Change.NEXT_TURN
    assert compare(old, RecallKey("u3", 4, "u2", "x")) is Change.NEXT_TURN  # context full
    assert compare(old, RecallKey("u2b", 4, "u1", "x")) is Change.EDITED
    assert compare(old, RecallKey("u1", 2, "u0", "x")) is Change.DELETED
    assert compare(old, RecallKey("u2", 3, None, "x")) is Change.DELETED
