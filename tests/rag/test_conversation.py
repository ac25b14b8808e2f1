"""rag.conversation: message validation, splitting and hashing, the follow-up heuristic, and the
history budget. Plain data, no database."""

import pytest

from rag.conversation import (
    CONDENSE_QUESTION_REPEATS,
    MAX_MESSAGES,
    ChatMessage,
    ConversationError,
    condense_heuristic,
    condense_prompt,
    history_within_budget,
    messages_hash,
    messages_parse,
    reads_as_follow_up,
    salient_words,
    split_conversation,
)


def user(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


def assistant(text: str) -> ChatMessage:
    return ChatMessage(role="assistant", content=text)


# --- messages_parse -----------------------------------------------------------------------


def test_parse_a_valid_conversation():
    messages = messages_parse([
        {"role": "developer", "content": "Answer briefly."},
        {"role": "user", "content": "Who was Tesla?"},
        {"role": "assistant", "content": [{"type": "text", "text": "An inventor."}, {"type": "text", "text": "Serbian-American."}]},
        {"role": "user", "content": "When was he born?"},
    ])
    assert messages == [
        ChatMessage(role="system", content="Answer briefly."),
        user("Who was Tesla?"),
        assistant("An inventor.\nSerbian-American."),
        user("When was he born?"),
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([], "messages: must hold at least one message."),
        ("hello", "messages: must be a list of messages."),
        (["hello"], "messages[0]: must be an object with a role and content."),
        ([{"role": "robot", "content": "hi"}], "messages[0].role: must be one of system, user, assistant (or developer), not 'robot'."),
        ([{"role": "user", "content": "hi"}, {"role": "tool", "content": "42", "tool_call_id": "c1"}],
         "messages[1]: tool and function messages are not supported."),
        ([{"role": "user", "content": "hi"}, {"role": "function", "content": "42", "name": "f"}],
         "messages[1]: tool and function messages are not supported."),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}],
         "messages[1]: tool and function messages are not supported."),
        ([{"role": "user", "content": [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "x"}}]}],
         "messages[0].content[1]: only text content parts are supported, not 'image_url'."),
        ([{"role": "user", "content": ["plain string part"]}],
         "messages[0].content[0]: only text content parts are supported, not 'str'."),
        ([{"role": "user", "content": None}], "messages[0].content: a message needs text content."),
        ([{"role": "user", "content": 42}], "messages[0].content: must be a string or a list of text parts, not int."),
        ([{"role": "user", "content": "  \n "}], "messages[0].content: must not be empty."),
        ([{"role": "user", "content": []}], "messages[0].content: must not be empty."),
        ([{"role": "user", "content": "a\x00b"}], "messages[0].content: must not contain NUL characters."),
        ([{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
         "messages[1]: two user messages in a row; user and assistant messages must alternate."),
        ([{"role": "assistant", "content": "Hello!"}],
         "messages[0]: an assistant message must follow a user message (roles must alternate, starting with user)."),
        ([{"role": "system", "content": "Be brief."}, {"role": "assistant", "content": "Hello!"}],
         "messages[1]: an assistant message must follow a user message (roles must alternate, starting with user)."),
        ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "assistant", "content": "again"}],
         "messages[2]: an assistant message must follow a user message (roles must alternate, starting with user)."),
        ([{"role": "user", "content": "hi"}, {"role": "system", "content": "Be brief."}],
         "messages[1]: system messages must come before the first user message."),
    ],
)
def test_parse_refuses(raw, message):
    with pytest.raises(ConversationError) as refused:
        messages_parse(raw)
    assert str(refused.value) == message


def test_parse_names_the_field():
    with pytest.raises(ConversationError, match=r"^history\[0\]\.role: "):
        messages_parse([{"role": "robot", "content": "hi"}], field="history")


def test_parse_refuses_more_than_max_messages():
    alternating = [{"role": ("user", "assistant")[i % 2], "content": f"m{i}"} for i in range(MAX_MESSAGES + 1)]
    with pytest.raises(ConversationError) as refused:
        messages_parse(alternating)
    assert str(refused.value) == f"messages: {MAX_MESSAGES + 1} messages; the limit is {MAX_MESSAGES}."
    assert len(messages_parse(alternating[:MAX_MESSAGES])) == MAX_MESSAGES


def test_parse_refuses_an_overlong_message():
    from rag.conversation import MAX_MESSAGE_CHARS

    with pytest.raises(ConversationError, match=rf"^messages\[0\]\.content: {MAX_MESSAGE_CHARS + 1} characters; the limit is"):
        messages_parse([{"role": "user", "content": "x" * (MAX_MESSAGE_CHARS + 1)}])


# --- split_conversation and messages_hash -------------------------------------------------


def test_split_conversation():
    messages = [
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="system", content="Cite sources."),
        user("Who was Tesla?"),
        assistant("An inventor."),
        user("When was he born?"),
    ]
    system, history, question = split_conversation(messages)
    assert system == "Be brief.\n\nCite sources."
    assert history == [user("Who was Tesla?"), assistant("An inventor.")]
    assert question == "When was he born?"


def test_split_a_single_question():
    assert split_conversation([user("Who was Tesla?")]) == ("", [], "Who was Tesla?")


@pytest.mark.parametrize("messages", [[], [user("Who was Tesla?"), assistant("An inventor.")]])
def test_split_needs_a_final_user_message(messages):
    with pytest.raises(ConversationError, match="the last message must be a user message"):
        split_conversation(messages)


def test_hash_ignores_whitespace_changes():
    first = [user("Who was  Tesla?"), assistant("An\ninventor.")]
    resent = [user(" Who was Tesla? "), assistant("An inventor.")]
    assert messages_hash(first) == messages_hash(resent)
    assert len(messages_hash(first)) == 64


def test_hash_differs_for_roles_text_and_order():
    base = messages_hash([user("Who was Tesla?"), assistant("An inventor.")])
    assert messages_hash([assistant("Who was Tesla?"), assistant("An inventor.")]) != base
    assert messages_hash([user("Who was Tesla?"), assistant("A physicist.")]) != base
    assert messages_hash([assistant("An inventor."), user("Who was Tesla?")]) != base
    assert messages_hash([user("Who was Tesla?")]) != base


# --- follow-up questions ------------------------------------------------------------------


def test_salient_words_drop_stopwords_and_repeats_in_order():
    assert salient_words("What did Tesla claim? Tesla's claim, what of it?") == ["Tesla", "claim", "Tesla's"]
    assert salient_words("and for the children?") == ["children"]


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        ("When was he born?", True),  # a pronoun
        ("What is its population in 1900?", True),
        ("Where did they settle after the revocation of the edict?", True),
        ("And for children?", True),  # few salient words
        ("What year did Nikola Tesla die in New York?", False),
        ("What is the theory that explains the origin of the name?", False),  # "that" is no anaphor
    ],
)
def test_reads_as_follow_up(question, expected):
    assert reads_as_follow_up(question) is expected


def test_first_turn_is_unchanged():
    assert condense_heuristic(question="When was he born?", history=[]) == "When was he born?"
    # System messages and assistant messages alone are no earlier question.
    assert condense_heuristic(question="When was he born?", history=[ChatMessage(role="system", content="Tesla")]) == "When was he born?"


def test_pronoun_follow_up_carries_the_subject_of_the_previous_question():
    history = [user("What did Nikola Tesla invent?"), assistant("The induction motor and AC systems.")]
    question = "When was he born?"
    assert condense_heuristic(question=question, history=history) == " ".join([question] * CONDENSE_QUESTION_REPEATS) + " Nikola Tesla"


def test_only_names_are_carried_when_there_are_names():
    history = [user("What did the Normans build in England after 1066?")]
    assert condense_heuristic(question="Where did they settle?", history=history).endswith(
        "Where did they settle? Normans England 1066"
    )


def test_all_salient_words_are_carried_when_the_previous_question_has_no_names():
    history = [user("what does singlet oxygen damage?")]
    assert condense_heuristic(question="How is it made?", history=history) == (
        "How is it made? How is it made? How is it made? singlet oxygen damage"
    )


def test_words_already_present_are_not_carried_again():
    history = [user("What did Tesla claim about the Wardenclyffe tower?")]
    rewritten = condense_heuristic(question="Who paid for the tower at wardenclyffe, and why did it fail?", history=history)
    # "Wardenclyffe" and "tower" are there already (case does not matter); of "Tesla" and
    # "claim", only the name is carried.
    assert rewritten.endswith("why did it fail? Tesla")
    assert rewritten.lower().count("wardenclyffe") == CONDENSE_QUESTION_REPEATS


def test_nothing_left_to_carry_leaves_the_question():
    history = [user("When was he born?")]
    assert condense_heuristic(question="And Tesla? When was he born?", history=history) == "And Tesla? When was he born?"


def test_a_complete_question_after_another_topic_is_unchanged():
    history = [user("What did Nikola Tesla invent?"), assistant("The induction motor.")]
    question = "How many paragraphs does the Amazon rainforest article have in Dutch?"
    assert condense_heuristic(question=question, history=history) == question


def test_the_last_user_message_is_the_one_carried_and_assistant_messages_are_not_read():
    history = [
        user("What did Nikola Tesla invent?"),
        assistant("The induction motor, in Budapest."),
        user("What did Martin Luther write?"),
        assistant("The Ninety-five Theses, in Wittenberg."),
    ]
    assert condense_heuristic(question="When?", history=history) == "When? When? When? Martin Luther"


def test_condense_prompt_shows_the_last_messages():
    history = [user("one"), assistant("two"), user("three"), assistant("four")]
    prompt = condense_prompt(question="five?", history=history, max_messages=2)
    assert "Human: three\nAssistant: four\n" in prompt
    assert "Human: one" not in prompt
    assert prompt.endswith("<Follow Up Message>\nfive?\n\n<Standalone question>\n")


# --- history within a budget --------------------------------------------------------------


def test_history_within_budget_drops_the_oldest_first():
    history = [user("a b c"), assistant("d e"), user("f g"), assistant("h i j")]
    assert history_within_budget(history, max_tokens=100) == history
    assert history_within_budget(history, max_tokens=5) == [user("f g"), assistant("h i j")]
    assert history_within_budget(history, max_tokens=0) == []


def test_history_within_budget_starts_with_a_user_message():
    history = [user("a b c"), assistant("d e"), user("f g"), assistant("h i j")]
    # "d e" would fit with the last exchange (7 words) but would start the history with an
    # assistant message, so it goes too.
    assert history_within_budget(history, max_tokens=7) == [user("f g"), assistant("h i j")]
    # Only the last assistant message fits: nothing is left once it cannot start the history.
    assert history_within_budget(history, max_tokens=3) == []


def test_history_within_budget_skips_system_messages_and_uses_the_given_counter():
    history = [ChatMessage(role="system", content="long " * 50), user("abc"), assistant("defgh")]
    assert history_within_budget(history, max_tokens=8, count_tokens=len) == [user("abc"), assistant("defgh")]
    assert history_within_budget(history, max_tokens=7, count_tokens=len) == []
