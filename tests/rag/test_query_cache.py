"""The query-vector LRU cache (rag/query_cache.py): hits and misses counted, the least recently
used evicted first, keys per encoder and per whitespace-normalised text, and 0 turning it off."""

import threading

import numpy as np
import pytest

from rag.query_cache import QueryVectorCache, normalised_query


class CountingEncoder:
    def __init__(self, offset: float = 0.0) -> None:
        self.calls: list[str] = []
        self.offset = offset

    def __call__(self, text: str) -> np.ndarray:
        self.calls.append(text)
        return np.array([len(text) + self.offset, 1.0], dtype=np.float32)


def test_a_repeated_query_is_encoded_once_and_counted_as_a_hit():
    cache, encode = QueryVectorCache(max_entries=8), CountingEncoder()
    first = cache.vector(encoder="m", text="What causes scurvy?", encode=encode)
    again = cache.vector(encoder="m", text="What causes scurvy?", encode=encode)
    assert encode.calls == ["What causes scurvy?"]
    assert np.array_equal(first, again)
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == (1, 1, 1)
    assert stats.hit_rate == pytest.approx(0.5)


def test_whitespace_variants_share_an_entry_but_case_does_not():
    cache, encode = QueryVectorCache(max_entries=8), CountingEncoder()
    cache.vector(encoder="m", text="  vitamin   C\tdose ", encode=encode)
    cache.vector(encoder="m", text="vitamin C dose", encode=encode)
    cache.vector(encoder="m", text="Vitamin C dose", encode=encode)
    assert encode.calls == ["vitamin C dose", "Vitamin C dose"]
    assert normalised_query(" a \n b ") == "a b"


def test_each_encoder_has_its_own_vectors():
    cache = QueryVectorCache(max_entries=8)
    base, trained = CountingEncoder(), CountingEncoder(offset=100.0)
    assert cache.vector(encoder="base", text="q", encode=base)[0] == 1.0
    assert cache.vector(encoder="retriever-v1", text="q", encode=trained)[0] == 101.0
    assert cache.vector(encoder="base", text="q", encode=base)[0] == 1.0
    assert (len(base.calls), len(trained.calls)) == (1, 1)


def test_the_least_recently_used_query_is_evicted_first():
    cache, encode = QueryVectorCache(max_entries=2), CountingEncoder()
    cache.vector(encoder="m", text="a", encode=encode)
    cache.vector(encoder="m", text="bb", encode=encode)
    cache.vector(encoder="m", text="a", encode=encode)  # "a" is now the most recent
    cache.vector(encoder="m", text="ccc", encode=encode)  # evicts "bb"
    cache.vector(encoder="m", text="a", encode=encode)
    cache.vector(encoder="m", text="bb", encode=encode)
    assert encode.calls == ["a", "bb", "ccc", "bb"]
    assert cache.stats().entries == 2


def test_size_zero_caches_nothing_and_cached_vectors_are_read_only():
    off, encode = QueryVectorCache(max_entries=0), CountingEncoder()
    off.vector(encoder="m", text="q", encode=encode)
    off.vector(encoder="m", text="q", encode=encode)
    assert len(encode.calls) == 2 and off.stats().entries == 0
    vector = QueryVectorCache(max_entries=1).vector(encoder="m", text="q", encode=encode)
    with pytest.raises(ValueError):
        vector[0] = 5.0
    with pytest.raises(ValueError):
        QueryVectorCache(max_entries=-1)


def test_threads_sharing_the_cache_never_exceed_its_bound():
    cache, encode = QueryVectorCache(max_entries=16), CountingEncoder()

    def ask_many(start: int) -> None:
        for i in range(200):
            cache.vector(encoder="m", text=f"q{(start + i) % 40}", encode=encode)

    threads = [threading.Thread(target=ask_many, args=(n * 7,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = cache.stats()
    assert stats.hits + stats.misses == 800
    assert stats.entries == 16
