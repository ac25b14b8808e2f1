"""Synthetic questions: the prompt, reading the model's reply, and the top-k filter."""

import pytest

from rag.synthetic_questions import (
    QuestionReplyError,
    RankedChunk,
    question_messages,
    questions_parse,
    source_rank,
)


def test_the_prompt_holds_the_passage_its_title_and_how_many_questions():
    system, user = question_messages(passage="Statins inhibit HMG-CoA reductase.", title="Statins", count=2)
    assert system["role"] == "system" and "on its own" in system["content"]
    assert user["role"] == "user"
    assert "Title: Statins\nPassage:\nStatins inhibit HMG-CoA reductase." in user["content"]
    assert "Write 2 different questions" in user["content"] and '{"questions"' in user["content"]
    with pytest.raises(ValueError):
        question_messages(passage="x", count=0)


@pytest.mark.parametrize(
    "reply",
    [
        '{"questions": ["Which enzyme do statins inhibit?", "What do statins lower?"]}',
        'Sure:\n```json\n{"questions": ["Which enzyme do statins inhibit?", "What do statins lower?"]}\n```',
        'Here you go {"questions": ["Which  enzyme do statins\\ninhibit?", "What do statins lower?", "Third?"]} done',
    ],
)
def test_questions_are_read_from_plain_fenced_or_wrapped_json_and_cut_to_the_count(reply):
    assert questions_parse(reply, count=2) == ["Which enzyme do statins inhibit?", "What do statins lower?"]


def test_repeated_empty_and_non_text_questions_are_left_out():
    reply = '{"questions": ["Q one?", "", "Q one?", 3, null, "Q two?"]}'
    assert questions_parse(reply, count=5) == ["Q one?", "Q two?"]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ("I cannot help with that.", "no JSON object"),
        ('{"question": "singular?"}', "no list of questions"),
        ('{"questions": ["", "  "]}', "empty"),
    ],
)
def test_a_reply_without_questions_is_an_error(reply, message):
    with pytest.raises(QuestionReplyError, match=message):
        questions_parse(reply, count=1)


def test_a_question_is_kept_only_when_its_source_chunk_is_in_the_top_k():
    ranked = [RankedChunk(chunk_id=chunk_id, rank=rank) for rank, chunk_id in enumerate([7, 3, 9, 4], start=1)]
    assert source_rank(ranked, source_chunk_id=7, top_k=1) == 1
    assert source_rank(ranked, source_chunk_id=9, top_k=3) == 3
    assert source_rank(ranked, source_chunk_id=9, top_k=2) is None
    assert source_rank(ranked, source_chunk_id=5, top_k=10) is None
