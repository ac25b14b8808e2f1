"""Tests for sentence-packing, token-bounded chunking with overlap."""

import random

import pytest
from transformers import AutoTokenizer

from rag.chunking import (
    HFTokenCounter,
    TextChunk,
    WhitespaceTokenCounter,
    chunk_budget,
    chunk_text,
    sentence_spans,
)
from rag.embedding import base_retriever_path

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def random_text(seed: int, *, sentences: int, max_words: int = 30, endings: tuple = (".", "!", "?", '."', "")) -> str:
    """Sentences of 1-`max_words` words with assorted endings, line breaks and paragraphs.

    The empty ending runs a sentence into the next one unless a line break follows.
    """
    generator = random.Random(seed)
    parts = []
    for _ in range(sentences):
        words = [generator.choice(WORDS) for _ in range(generator.randint(1, max_words))]
        parts.append(" ".join(words).capitalize() + generator.choice(endings))
        parts.append(generator.choice([" ", "  ", "\n", "\n\n", " \t "]))
    return "".join(parts)


def assert_valid_chunks(text: str, chunks: list[TextChunk], *, counter, max_tokens: int) -> None:
    covered = [False] * len(text)
    for order, chunk in enumerate(chunks):
        assert chunk.order == order
        assert chunk.text == text[chunk.start : chunk.end]
        assert chunk.text == chunk.text.strip()
        assert 1 <= chunk.token_count <= max_tokens
        assert len(counter.token_offsets(chunk.text)) == chunk.token_count
        for position in range(chunk.start, chunk.end):
            covered[position] = True
    lost = [position for position, character in enumerate(text) if not character.isspace() and not covered[position]]
    assert lost == []
    starts = [chunk.start for chunk in chunks]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_sentence_spans_split_on_punctuation_and_line_breaks():
    text = '  He said "Stop." Then left!  Really?\nA heading\n\nNext para. 3.5 stays whole'

    sentences = [text[start:end] for start, end in sentence_spans(text)]

    assert sentences == ['He said "Stop."', "Then left!", "Really?", "A heading", "Next para.", "3.5 stays whole"]


def test_short_text_is_one_chunk():
    chunks = chunk_text("One sentence. Two sentences.", counter=WhitespaceTokenCounter(), max_tokens=10, overlap_tokens=2)

    assert chunks == [TextChunk(order=0, text="One sentence. Two sentences.", token_count=4, start=0, end=28)]


def test_whitespace_only_text_gives_no_chunks():
    assert chunk_text(" \n\t ", counter=WhitespaceTokenCounter(), max_tokens=10, overlap_tokens=2) == []


def test_sentences_are_packed_whole_with_overlap():
    text = " ".join(f"Sentence {number} has five words." for number in range(1, 9))

    chunks = chunk_text(text, counter=WhitespaceTokenCounter(), max_tokens=12, overlap_tokens=5)

    assert [chunk.text for chunk in chunks] == [
        "Sentence 1 has five words. Sentence 2 has five words.",
        "Sentence 2 has five words. Sentence 3 has five words.",
        "Sentence 3 has five words. Sentence 4 has five words.",
        "Sentence 4 has five words. Sentence 5 has five words.",
        "Sentence 5 has five words. Sentence 6 has five words.",
        "Sentence 6 has five words. Sentence 7 has five words.",
        "Sentence 7 has five words. Sentence 8 has five words.",
    ]
    assert all(chunk.token_count == 10 for chunk in chunks)


def test_no_overlap_when_overlap_tokens_is_zero():
    text = " ".join(f"Sentence {number} has five words." for number in range(1, 7))

    chunks = chunk_text(text, counter=WhitespaceTokenCounter(), max_tokens=10, overlap_tokens=0)

    assert [chunk.text for chunk in chunks] == [
        "Sentence 1 has five words. Sentence 2 has five words.",
        "Sentence 3 has five words. Sentence 4 has five words.",
        "Sentence 5 has five words. Sentence 6 has five words.",
    ]


def test_one_sentence_overlap_when_sentence_is_longer_than_overlap_target():
    text = "One two three four five six. Seven eight nine ten eleven twelve. Thirteen fourteen."

    chunks = chunk_text(text, counter=WhitespaceTokenCounter(), max_tokens=12, overlap_tokens=2)

    assert [chunk.text for chunk in chunks] == [
        "One two three four five six. Seven eight nine ten eleven twelve.",
        "Seven eight nine ten eleven twelve. Thirteen fourteen.",
    ]


def test_long_sentence_is_split_into_overlapping_token_windows():
    words = [f"w{number}" for number in range(25)]
    text = "Short intro. " + " ".join(words) + ". Short outro."

    chunks = chunk_text(text, counter=WhitespaceTokenCounter(), max_tokens=10, overlap_tokens=3)

    assert [chunk.text for chunk in chunks] == [
        "Short intro.",
        " ".join(words[0:10]),
        " ".join(words[7:17]),
        " ".join(words[14:24]),
        " ".join(words[21:25]) + ".",
        "Short outro.",
    ]
    assert [chunk.token_count for chunk in chunks] == [2, 10, 10, 10, 4, 2]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("max_tokens", "overlap_tokens"), [(8, 0), (8, 3), (20, 5), (64, 16)])
def test_random_texts_keep_every_invariant(seed: int, max_tokens: int, overlap_tokens: int):
    text = random_text(seed, sentences=40)
    counter = WhitespaceTokenCounter()

    chunks = chunk_text(text, counter=counter, max_tokens=max_tokens, overlap_tokens=overlap_tokens)

    assert_valid_chunks(text, chunks, counter=counter, max_tokens=max_tokens)


@pytest.mark.parametrize("seed", range(5))
def test_every_neighbouring_chunk_overlaps_when_sentences_are_short(seed: int):
    # Sentences of at most 8 words all fit the 10-token overlap, so each chunk must
    # start with the tail of the previous one.
    text = random_text(seed, sentences=80, max_words=8, endings=(".", "!", "?"))

    chunks = chunk_text(text, counter=WhitespaceTokenCounter(), max_tokens=40, overlap_tokens=10)

    assert len(chunks) > 5
    for previous, following in zip(chunks, chunks[1:]):
        shared = text[following.start : previous.end]
        assert following.start < previous.end
        assert 1 <= len(shared.split()) <= 10
        assert following.end > previous.end


@pytest.mark.parametrize(
    ("max_tokens", "overlap_tokens"),
    [(7, 0), (16, 8), (16, -1), (100, 50)],
)
def test_invalid_sizes_raise(max_tokens: int, overlap_tokens: int):
    with pytest.raises(ValueError):
        chunk_text("Some text.", counter=WhitespaceTokenCounter(), max_tokens=max_tokens, overlap_tokens=overlap_tokens)


def test_chunk_budget_leaves_room_for_special_tokens():
    assert chunk_budget(256) == 200
    assert chunk_budget(128) == 126
    assert chunk_budget(512, requested=300) == 300
    assert chunk_budget(256, requested=300) == 254


def test_real_retriever_tokenizer_bounds_chunks_on_a_long_text():
    tokenizer = AutoTokenizer.from_pretrained(base_retriever_path(), local_files_only=True)
    counter = HFTokenCounter(tokenizer)
    paragraph = (
        "Retrieval-augmented generation grounds a language model's answer in documents. "
        "The retriever embeds chunks; at question time the nearest chunks become context! "
        "Is a 200-token chunk too long? Usually not, for MiniLM's 256-token window.\n\n"
    )
    unbroken = "tokenisation " * 400  # one "sentence" far longer than the budget
    text = paragraph * 60 + unbroken + paragraph * 5
    budget = chunk_budget(256)

    chunks = chunk_text(text, counter=counter, max_tokens=budget, overlap_tokens=32)

    assert len(counter.token_offsets(text)) > 10 * budget
    assert_valid_chunks(text, chunks, counter=counter, max_tokens=budget)
    # The encoder itself must see no more than its window, special tokens included.
    assert max(len(tokenizer(chunk.text)["input_ids"]) for chunk in chunks) <= 256
    assert max(chunk.token_count for chunk in chunks) > budget * 3 // 4
