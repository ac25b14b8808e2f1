"""Corpus pairs (RA-DIT's corpus data): where a chunk splits, what is too short, determinism."""

import pytest

from rag.corpus_pairs import corpus_pair, corpus_pairs

SENTENCES = (
    "Vitamin D supplementation increases calcium absorption in the gut. "
    "In elderly adults, daily vitamin D reduced the rate of hip fractures by a fifth. "
    "The effect was strongest in people with low baseline vitamin D levels. "
    "Muscle strength also improved in the treated group after one year."
)


def words(text):
    return text.split()


def test_the_query_is_the_opening_and_the_positive_its_continuation_split_at_a_sentence_end():
    pair = corpus_pair("c1", SENTENCES, min_query_words=5, max_query_words=30, min_positive_words=5)

    assert words(pair.query) + words(pair.positive) == words(SENTENCES)
    # Sentence ends fall after 9, 24, 36 and 47 words; those within [5, min(30, 47 - 5)] are 9 and 24.
    assert len(words(pair.query)) in (9, 24)
    assert pair.query.endswith(".")
    assert pair.key == "c1"


def test_every_sentence_end_in_range_is_chosen_for_some_seed_and_none_outside():
    lengths = {
        len(words(corpus_pair("c1", SENTENCES, seed=seed, min_query_words=5, max_query_words=30, min_positive_words=5).query))
        for seed in range(40)
    }
    assert lengths == {9, 24}


def test_without_a_sentence_end_in_range_it_splits_at_a_word_within_the_bounds():
    text = " ".join(f"w{i}" for i in range(60))  # one long sentence, no full stop
    lengths = {len(words(corpus_pair("k", text, seed=seed, min_query_words=8, max_query_words=12, min_positive_words=16).query))
               for seed in range(60)}  # fmt: skip
    assert lengths <= set(range(8, 13)) and len(lengths) > 1


def test_the_positive_keeps_its_minimum_even_when_max_query_words_would_allow_more():
    text = " ".join(f"w{i}" for i in range(30))
    for seed in range(30):
        pair = corpus_pair("k", text, seed=seed, min_query_words=8, max_query_words=100, min_positive_words=16)
        assert 8 <= len(words(pair.query)) <= 14 and len(words(pair.positive)) >= 16


def test_chunks_too_short_for_both_halves_are_skipped():
    text = " ".join(f"w{i}" for i in range(23))
    assert corpus_pair("k", text, min_query_words=8, min_positive_words=16) is None
    assert corpus_pair("k", text + " w23", min_query_words=8, min_positive_words=16) is not None
    assert corpus_pair("k", "", min_query_words=8, min_positive_words=16) is None
    pairs = corpus_pairs([("short", "too short"), ("long", SENTENCES)], min_query_words=5, min_positive_words=5)
    assert [pair.key for pair in pairs] == ["long"]


def test_the_same_seed_gives_the_same_pairs_and_a_chunk_splits_alike_whatever_else_is_drawn():
    chunks = [(f"c{i}", f"Sentence {i} one is here and long enough. " * 8) for i in range(20)]
    first = corpus_pairs(chunks, seed=7, min_query_words=4, min_positive_words=4)
    assert first == corpus_pairs(chunks, seed=7, min_query_words=4, min_positive_words=4)
    alone = corpus_pairs(chunks[5:6], seed=7, min_query_words=4, min_positive_words=4)
    assert alone == [pair for pair in first if pair.key == "c5"]
    other_seed = corpus_pairs(chunks, seed=8, min_query_words=4, min_positive_words=4)
    assert [len(p.query) for p in other_seed] != [len(p.query) for p in first]


def test_two_chunks_with_the_same_opening_keep_only_the_first():
    text = "Header of every page here. " * 3 + "Then something different follows for this chunk."
    pairs = corpus_pairs([("a", text), ("b", text.replace("different", "else"))], min_query_words=5,
                         max_query_words=5, min_positive_words=5)  # fmt: skip
    assert [pair.key for pair in pairs] == ["a"]


def test_impossible_bounds_are_refused():
    with pytest.raises(ValueError):
        corpus_pair("k", SENTENCES, min_query_words=10, max_query_words=5)
    with pytest.raises(ValueError):
        corpus_pair("k", SENTENCES, min_positive_words=0)
