"""Generation-type classification on prompts shaped as SillyTavern sends them (reference §6.3–7)."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from kvtui.proxy.gentype import (
    HISTORY_WINDOW,
    Classification,
    PromptTail,
    TailRole,
    TurnMemory,
    classify_generation,
    classify_request,
    last_user_message,
    remember,
    render_messages,
    request_n_predict,
    request_prompt,
    request_stop,
    split_tail,
    stop_names,
)
from kvtui.slots import GenType

STORY = (
    "Seraphina is the guardian of Eldoria's forest, a healer who protects travelers.\n"
    "Seraphina's personality: caring, protective, wise\n"
    "Scenario: Alex wakes up in Seraphina's glade after being attacked by beasts.\n"
    "Alex is a lost traveler.\n"
)
GREETING = "*You wake up in a glade, the air smelling of herbs.* Rest, traveler. You are safe."
REPLY = "You are in my glade, deep in Eldoria. *She smiles softly.* The beasts cannot reach us."
SUMMARY = (
    "[Pause your roleplay. Summarize the most important facts and events in the story so far. "
    "Limit the summary to 300 words or less. Your response should include nothing but the "
    "summary.]"
)
USER_STOP = ["\nAlex:"]


def st_prompt(messages: list[tuple[str, str]], tail: str | None = "Seraphina") -> str:
    """Non-instruct text completion: story string, ``***``, ``Name: text`` lines, ``\\nName:``."""
    chat = "\n".join(f"{name}: {text}" for name, text in messages)
    prompt = f"{STORY}***\n{chat}"
    return f"{prompt}\n{tail}:" if tail else prompt


FIRST = [("Seraphina", GREETING), ("Alex", "Hi! Where am I?")]


def classify(
    prompt: str,
    previous: TurnMemory | None = None,
    *,
    stop: list[str] = USER_STOP,
    n_predict: int | None = None,
    declared: GenType | None = None,
) -> Classification:
    """Classify for Seraphina, with SillyTavern's 1:1 stop strings unless told otherwise."""
    return classify_generation(
        prompt,
        previous=previous,
        stop=stop,
        n_predict=n_predict,
        character="Seraphina",
        declared=declared,
    )


def first_turn() -> tuple[str, TurnMemory]:
    prompt = st_prompt(FIRST)
    memory = remember(None, classify(prompt), prompt, " " + REPLY)
    assert memory is not None
    return prompt, memory


# -- the reply-request tail --------------------------------------------------------------


@pytest.mark.parametrize(
    ("ending", "name", "role"),
    [
        ("\nSeraphina:", "Seraphina", None),
        ("\nSeraphina: ", "Seraphina", None),
        ("<|im_start|>assistant\nSeraphina:", "Seraphina", TailRole.ASSISTANT),
        ("<|im_start|>assistant\n", None, TailRole.ASSISTANT),
        ("<|im_start|>user\n", None, TailRole.USER),
        ("<|im_start|>user\nAlex:", "Alex", TailRole.USER),
        ("<|im_start|>system\n", None, TailRole.SYSTEM),
        ("[INST] Alex: hi [/INST] Seraphina:", "Seraphina", TailRole.ASSISTANT),
        ("[INST] hi [/INST]", None, TailRole.ASSISTANT),
        ("<|start_header_id|>assistant<|end_header_id|>\n\n", None, TailRole.ASSISTANT),
        ("<|start_header_id|>assistant<|end_header_id|>\n\nSeraphina:", "Seraphina", "assistant"),
        ("<start_of_turn>model\n", None, TailRole.ASSISTANT),
        ("\n### Response:\n", None, TailRole.ASSISTANT),
        ("\nUSER: hi\nASSISTANT: ", None, TailRole.ASSISTANT),
        ("\nUSER: hi\nASSISTANT: Seraphina:", "Seraphina", TailRole.ASSISTANT),
    ],
)
def test_split_tail_finds_the_reply_request(
    ending: str, name: str | None, role: str | None
) -> None:
    prompt = STORY + "Seraphina: hello\nAlex: hi" + ending
    tail = split_tail(prompt)
    assert (tail.name, tail.role) == (name, role)
    assert prompt.endswith(tail.text) and tail.present
    assert ending.strip() in tail.text or tail.text.strip() in ending


@pytest.mark.parametrize(
    "prompt",
    [
        STORY + "Seraphina: hello\nAlex: hi\n" + SUMMARY,  # a quiet prompt, no tail
        STORY + "Seraphina: hello\nRespond in JSON with these keys:",  # a label, not a speaker
        STORY + "Seraphina: She said:",  # a continued message that ends in a colon
        STORY + "Seraphina: hello\n10:",
    ],
)
def test_split_tail_ignores_what_is_not_a_reply_request(prompt: str) -> None:
    assert split_tail(prompt) == PromptTail()


def test_a_name_tail_needs_the_name_earlier_unless_known() -> None:
    prompt = "A story.\nNobody: hi\nZed:"
    assert split_tail(prompt).name is None
    assert split_tail(prompt, known_names=["Zed"]).name == "Zed"


def test_stop_names_read_sillytavern_stop_strings() -> None:
    stop = ["\nAlex:", "\nBob:", "<|im_end|>", "\n", "\nno colon"]
    assert stop_names(stop) == ["Alex", "Bob"]


# -- a 1:1 chat in text-completion (non-instruct) mode -----------------------------------


def test_the_first_turn_is_normal_and_a_message() -> None:
    result = classify(st_prompt(FIRST))
    assert (result.gen_type, result.counts_message) == (GenType.NORMAL, True)
    assert result.tail.name == "Seraphina"
    assert result.user_name == "Alex"  # learned from the stop strings


def test_the_same_prompt_again_is_a_swipe_and_not_a_message() -> None:
    prompt, memory = first_turn()
    result = classify(prompt, memory)
    assert (result.gen_type, result.counts_message) == (GenType.SWIPE, False)


def test_a_new_user_turn_is_normal() -> None:
    _, memory = first_turn()
    prompt = st_prompt([*FIRST, ("Seraphina", REPLY), ("Alex", "Thank you. Who are you?")])
    result = classify(prompt, memory)
    assert (result.gen_type, result.counts_message) == (GenType.NORMAL, True)


def test_an_edited_last_user_message_then_regenerate_is_a_changed_turn() -> None:
    _, memory = first_turn()
    edited = st_prompt([("Seraphina", GREETING), ("Alex", "Hi! Where am I? Who are you?")])
    result = classify(edited, memory)
    assert (result.gen_type, result.counts_message) == (GenType.NORMAL, True)
    after = remember(memory, result, edited, " I am Seraphina.")
    assert after is not None and after.user_message == "Hi! Where am I? Who are you?"


def test_deleting_the_last_exchange_and_regenerating_is_a_changed_turn() -> None:
    second = [*FIRST, ("Seraphina", REPLY), ("Alex", "Thanks!")]
    memory = remember(None, classify(st_prompt(second)), st_prompt(second), " Of course.")
    result = classify(st_prompt(FIRST), memory)
    assert result.gen_type is GenType.NORMAL


@pytest.mark.parametrize("cut", [10, 40, len(REPLY)])
def test_continue_is_the_last_prompt_plus_the_reply_so_far(cut: int) -> None:
    prompt, memory = first_turn()
    result = classify(prompt + " " + REPLY[:cut], memory)
    assert (result.gen_type, result.counts_message) == (GenType.CONTINUE, False)


def test_continue_twice_then_swipe_then_a_new_turn() -> None:
    prompt, memory = first_turn()
    c1 = prompt + " " + REPLY
    r1 = classify(c1, memory)
    assert r1.gen_type is GenType.CONTINUE
    memory2 = remember(memory, r1, c1, " *She hands you a cup of tea.*")
    assert memory2 is not None and memory2.history == memory.history
    c2 = c1 + " *She hands you a cup of tea.*"
    assert classify(c2, memory2).gen_type is GenType.CONTINUE
    assert classify(prompt, memory2).gen_type is GenType.SWIPE
    full = REPLY + " *She hands you a cup of tea.*"
    nxt = st_prompt([*FIRST, ("Seraphina", full), ("Alex", "Thanks!")])
    assert classify(nxt, memory2).gen_type is GenType.NORMAL


def test_a_quiet_summary_is_quiet_and_leaves_the_memory_alone() -> None:
    prompt, memory = first_turn()
    quiet = st_prompt([*FIRST, ("Seraphina", REPLY)], tail=None) + "\n" + SUMMARY
    result = classify(quiet, memory)
    assert (result.gen_type, result.counts_message) == (GenType.QUIET, False)
    assert remember(memory, result, quiet, "A summary.") is memory
    assert classify(prompt, memory).gen_type is GenType.SWIPE  # still a swipe afterwards


def test_a_quiet_prompt_ending_in_a_label_is_still_quiet() -> None:
    _, memory = first_turn()
    quiet = st_prompt([*FIRST, ("Seraphina", REPLY)], tail=None) + "\nRespond in JSON:"
    assert classify(quiet, memory).gen_type is GenType.QUIET


def test_a_one_token_request_is_quiet() -> None:
    prompt, memory = first_turn()
    assert classify(prompt, memory, n_predict=1).gen_type is GenType.QUIET
    assert classify(prompt, None, n_predict=0).gen_type is GenType.QUIET
    assert classify(prompt, memory, n_predict=-1).gen_type is GenType.SWIPE


def test_impersonate_asks_for_the_user_and_is_skipped() -> None:
    _, memory = first_turn()
    impersonate = st_prompt([*FIRST, ("Seraphina", REPLY)], tail="Alex")
    stop = ["\nSeraphina:"]  # SillyTavern swaps the stop string on impersonate
    result = classify(impersonate, memory, stop=stop)
    assert (result.gen_type, result.counts_message) == (GenType.IMPERSONATE, False)
    assert remember(memory, result, impersonate, " I look around.") is memory
    # The user name remembered from earlier turns is enough without stop strings.
    assert classify(impersonate, memory, stop=[]).gen_type is GenType.IMPERSONATE
    # And the stop strings are enough without a memory.
    assert classify(impersonate, None, stop=stop).gen_type is GenType.IMPERSONATE


def test_without_memory_a_prompt_without_tail_is_quiet() -> None:
    quiet = st_prompt(FIRST, tail=None) + "\n" + SUMMARY
    assert classify(quiet).gen_type is GenType.QUIET


def test_a_random_macro_far_above_the_chat_does_not_break_a_swipe() -> None:
    chat = [*FIRST] + [("Seraphina", REPLY), ("Alex", "Tell me more. " * 10)] * 8
    prompt = "Today is Monday.\n" + st_prompt(chat)
    assert len(prompt) > 2 * HISTORY_WINDOW
    memory = remember(None, classify(prompt), prompt, " More.")
    again = "Today is Tuesday!\n" + st_prompt(chat)
    assert classify(again, memory).gen_type is GenType.SWIPE
    nxt = "Today is Tuesday!\n" + st_prompt([*chat, ("Seraphina", "More."), ("Alex", "And?")])
    assert classify(nxt, memory).gen_type is GenType.NORMAL
    assert classify(again + " Mo", memory).gen_type is GenType.CONTINUE


def test_a_declared_type_wins() -> None:
    prompt, memory = first_turn()
    result = classify(prompt, memory, declared=GenType.REGENERATE)
    assert (result.gen_type, result.counts_message) == (GenType.REGENERATE, False)


# -- group chats -------------------------------------------------------------------------

GROUP = [("Seraphina", GREETING), ("Alex", "Hello, everyone.")]


def test_group_rounds_are_normal_per_member_and_a_regenerate_is_a_swipe() -> None:
    stop_for_sera = ["\nAlex:", "\nBrom:", "\nLyra:"]
    p1 = st_prompt(GROUP)
    sera = remember(None, classify(p1, stop=stop_for_sera), p1, " Welcome.")
    # Brom answered after her, then the user spoke: a new turn for Seraphina.
    p2 = st_prompt([*GROUP, ("Seraphina", "Welcome."), ("Brom", "Hmph."), ("Alex", "Hi Brom.")])
    result = classify(p2, sera, stop=stop_for_sera)
    assert (result.gen_type, result.counts_message) == (GenType.NORMAL, True)
    # Regenerating the group round sends her the same history again.
    assert classify(p1, sera, stop=stop_for_sera).gen_type is GenType.SWIPE


def test_a_group_round_without_user_message_is_still_normal() -> None:
    stop = ["\nAlex:", "\nBrom:"]
    p1 = st_prompt(GROUP)
    sera = remember(None, classify(p1, stop=stop), p1, " Welcome.")
    p2 = st_prompt([*GROUP, ("Seraphina", "Welcome."), ("Brom", "Hmph.")])
    assert classify(p2, sera, stop=stop).gen_type is GenType.NORMAL


# -- instruct mode -----------------------------------------------------------------------


def chatml(turns: list[tuple[str, str]], tail: str = "<|im_start|>assistant\n") -> str:
    body = "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)
    return f"<|im_start|>system\n{STORY}<|im_end|>\n{body}{tail}"


CHATML_FIRST = [("assistant", GREETING), ("user", "Hi! Where am I?")]


def test_chatml_solo_turns() -> None:
    p1 = chatml(CHATML_FIRST)
    r1 = classify(p1, stop=["\nAlex:", "<|im_end|>"])
    assert r1.gen_type is GenType.NORMAL and r1.tail.role is TailRole.ASSISTANT
    memory = remember(None, r1, p1, REPLY)
    assert memory is not None and memory.user_message == "Hi! Where am I?"
    assert classify(p1, memory).gen_type is GenType.SWIPE
    assert classify(p1 + REPLY[:20], memory).gen_type is GenType.CONTINUE
    p2 = chatml([*CHATML_FIRST, ("assistant", REPLY), ("user", "Thanks.")])
    assert classify(p2, memory).gen_type is GenType.NORMAL
    impersonate = chatml([*CHATML_FIRST, ("assistant", REPLY)], tail="<|im_start|>user\n")
    assert classify(impersonate, memory).gen_type is GenType.IMPERSONATE


def test_chatml_quiet_with_system_or_output_sequence() -> None:
    p1 = chatml(CHATML_FIRST)
    memory = remember(None, classify(p1), p1, REPLY)
    turns = [*CHATML_FIRST, ("assistant", REPLY), ("system", SUMMARY)]
    as_system = chatml(turns, tail="<|im_start|>system\n")
    as_output = chatml(turns)
    assert classify(as_system, memory).gen_type is GenType.QUIET
    assert classify(as_output, memory).gen_type is GenType.QUIET


def test_chatml_group_with_names() -> None:
    turns = [("assistant", f"Seraphina: {GREETING}"), ("user", "Alex: Hello.")]
    p1 = chatml(turns, tail="<|im_start|>assistant\nSeraphina:")
    r1 = classify(p1, stop=["\nAlex:", "\nBrom:"])
    assert (r1.gen_type, r1.tail.name) == (GenType.NORMAL, "Seraphina")
    memory = remember(None, r1, p1, " Welcome.")
    assert classify(p1, memory).gen_type is GenType.SWIPE
    assert classify(p1 + " Wel", memory).gen_type is GenType.CONTINUE


def test_llama3_and_mistral_turns() -> None:
    llama = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + STORY + "<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    memory = remember(None, classify(llama), llama, REPLY)
    assert classify(llama, memory).gen_type is GenType.SWIPE
    nxt = llama + REPLY + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nOk.<|eot_id|>"
    nxt += "<|start_header_id|>assistant<|end_header_id|>\n\n"
    assert classify(nxt, memory).gen_type is GenType.NORMAL
    mistral = f"[INST] {STORY}\nHi! [/INST]"
    memory = remember(None, classify(mistral), mistral, REPLY)
    assert classify(mistral + " " + REPLY[:12], memory).gen_type is GenType.CONTINUE
    assert classify(f"{mistral} {REPLY}</s>[INST] Ok. [/INST]", memory).gen_type is GenType.NORMAL


# -- memory and helpers ------------------------------------------------------------------


def test_last_user_message() -> None:
    history = st_prompt([*FIRST, ("Seraphina", REPLY), ("Alex", "Line one.\nLine two.")], None)
    assert last_user_message(history, "Alex") == "Line one.\nLine two."
    group = st_prompt([*FIRST, ("Brom", "Hmph.")], None)
    assert last_user_message(group, "Alex") == "Hi! Where am I?"
    assert last_user_message(chatml(CHATML_FIRST), None) == "Hi! Where am I?"
    assert last_user_message("no users here", None) is None


def test_request_helpers() -> None:
    body = {"prompt": "x", "stop": "\nAlex:", "max_tokens": 300}
    assert (request_prompt(body), request_stop(body), request_n_predict(body)) == (
        "x",
        ["\nAlex:"],
        300,
    )
    assert request_prompt({"prompt": ["a", "b"]}) == "a"
    assert request_prompt({"prompt": [1, 2, 3]}) is None
    assert request_stop({"stop": ["\nA:", 3]}) == ["\nA:"]
    assert request_n_predict({"n_predict": True}) is None
    assert classify_request({"prompt": [1, 2]}, None) is None


def test_chat_completions_classify_like_text() -> None:
    messages: list[dict[str, object]] = [
        {"role": "system", "content": STORY},
        {"role": "assistant", "content": GREETING},
        {"role": "user", "content": [{"type": "text", "text": "Hi!"}]},
    ]
    body = {"messages": messages, "max_tokens": 300}
    r1 = classify_request(body, None)
    assert r1 is not None and r1.gen_type is GenType.NORMAL
    memory = remember(None, r1, render_messages(messages), REPLY)
    again = classify_request(body, memory)
    assert again is not None and again.gen_type is GenType.SWIPE
    prefill = [*messages, {"role": "assistant", "content": REPLY[:15]}]
    cont = classify_request({"messages": prefill}, memory)
    assert cont is not None and cont.gen_type is GenType.CONTINUE
    more = [*messages, {"role": "assistant", "content": REPLY}, {"role": "user", "content": "k"}]
    nxt = classify_request({"messages": more}, memory)
    assert nxt is not None and nxt.gen_type is GenType.NORMAL
    named = render_messages([{"role": "assistant", "name": "Seraphina", "content": "Hi"}])
    assert named == "<|im_start|>assistant\nSeraphina: Hi"


# -- properties --------------------------------------------------------------------------

line_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")),
    min_size=1,
    max_size=80,
).filter(lambda s: s.strip() != "" and ":" not in s)


@given(user_lines=st.lists(line_text, min_size=1, max_size=4), reply=line_text, data=st.data())
def test_properties_of_a_turn(user_lines: list[str], reply: str, data: st.DataObject) -> None:
    chat = [("Seraphina", GREETING)] + [("Alex", text) for text in user_lines]
    prompt = st_prompt(chat)
    first = classify(prompt)
    assert first.gen_type is GenType.NORMAL
    memory = remember(None, first, prompt, " " + reply)
    assert classify(prompt, memory).gen_type is GenType.SWIPE
    cut = data.draw(st.integers(1, len(reply)))
    assume(reply[:cut].strip())
    assert classify(prompt + " " + reply[:cut], memory).gen_type is GenType.CONTINUE
    new = data.draw(line_text)
    grown = st_prompt([*chat, ("Seraphina", reply.strip()), ("Alex", new)])
    assert classify(grown, memory).gen_type is GenType.NORMAL
    quiet = st_prompt([*chat, ("Seraphina", reply.strip())], tail=None) + "\n" + SUMMARY
    assert classify(quiet, memory).gen_type is GenType.QUIET


@given(prompt=st.text(max_size=300), stop=st.lists(st.text(max_size=12), max_size=3))
def test_classification_never_fails(prompt: str, stop: list[str]) -> None:
    result = classify_generation(prompt, stop=stop)
    assert result.history + result.tail.text == prompt
    memory = remember(None, result, prompt, "x")
    again = classify_generation(prompt + "y", previous=memory, stop=stop)
    assert again.counts_message == (again.gen_type is GenType.NORMAL)
