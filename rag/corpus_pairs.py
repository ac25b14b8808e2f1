"""Retriever training pairs from the corpus alone, before any label exists (RA-DIT's "corpus data").

A chunk is split in two: its opening span plays the query and its continuation the positive
passage. The split falls at a sentence end where one lies in the allowed range (so the query is
whole sentences), else at a word; where exactly is drawn from a generator seeded by the seed and
the chunk's own key, so a chunk splits the same way whichever other chunks are sampled with it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from rag.chunking import sentence_spans

DEFAULT_MIN_QUERY_WORDS = 8
DEFAULT_MAX_QUERY_WORDS = 48
DEFAULT_MIN_POSITIVE_WORDS = 16


@dataclass(frozen=True)
class CorpusPair:
    """One chunk's opening span (the query) and its continuation (the positive)."""

    key: str
    query: str
    positive: str


def _sentence_boundaries(text: str) -> list[int]:
    """Word counts at which a sentence of `text` ends (the last one, the whole text, included)."""
    boundaries, words = [], 0
    for start, end in sentence_spans(text):
        words += len(text[start:end].split())
        boundaries.append(words)
    return boundaries


def corpus_pair(
    key: str,
    text: str,
    *,
    seed: int = 0,
    min_query_words: int = DEFAULT_MIN_QUERY_WORDS,
    max_query_words: int = DEFAULT_MAX_QUERY_WORDS,
    min_positive_words: int = DEFAULT_MIN_POSITIVE_WORDS,
) -> CorpusPair | None:
    """The pair of one chunk, or None when it is too short to give both a query and a positive."""
    if min_query_words < 1 or min_positive_words < 1 or max_query_words < min_query_words:
        raise ValueError("need 1 <= min_query_words <= max_query_words and min_positive_words >= 1")
    words = text.split()
    low, high = min_query_words, min(max_query_words, len(words) - min_positive_words)
    if high < low:
        return None
    # A string seed: random.Random hashes it with sha512, the same in every process.
    rng = random.Random(f"{seed}:{key}")
    at_sentence_end = [count for count in _sentence_boundaries(text) if low <= count <= high]
    split = rng.choice(at_sentence_end) if at_sentence_end else rng.randint(low, high)
    return CorpusPair(key=key, query=" ".join(words[:split]), positive=" ".join(words[split:]))


def corpus_pairs(
    chunks: Iterable[tuple[str, str]],
    *,
    seed: int = 0,
    min_query_words: int = DEFAULT_MIN_QUERY_WORDS,
    max_query_words: int = DEFAULT_MAX_QUERY_WORDS,
    min_positive_words: int = DEFAULT_MIN_POSITIVE_WORDS,
) -> list[CorpusPair]:
    """Pairs of the (key, text) chunks given, in their order; chunks too short are skipped.

    Two chunks with the same opening (boilerplate headers) would teach one query two answers
    and be each other's in-batch false negative: only the first is kept.
    """
    pairs, openings = [], set()
    for key, text in chunks:
        pair = corpus_pair(
            key, text, seed=seed, min_query_words=min_query_words, max_query_words=max_query_words,
            min_positive_words=min_positive_words,
        )  # fmt: skip
        if pair is None or pair.query in openings:
            continue
        openings.add(pair.query)
        pairs.append(pair)
    return pairs
