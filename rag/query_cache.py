"""A bounded, thread-safe LRU cache of query vectors keyed by (encoder, normalised query text).

Encoding the question is most of a dense retrieval's time on a CPU (docs/benchmarks.md), and
RAG traffic repeats itself: the same FAQ-style question, a client retrying, a curator re-running
a query. `functools.lru_cache` would do the eviction, but it cannot report its hit rate per
encoder, be cleared for one encoder, or key on a normalised text without wrapping; this is the
thirty lines it takes.

The text is normalised only in a way the encoders' WordPiece tokenizer cannot see (runs of
whitespace to one space, ends stripped: it splits on whitespace), so a cached vector is exactly
the vector the encoder would return. Case and Unicode form are kept: a cased encoder would tell
"US" from "us", and does not normalise composed from decomposed accents.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def normalised_query(text: str) -> str:
    """The text as the cache keys it: whitespace runs collapsed to one space, ends stripped."""
    return " ".join(text.split())


@dataclass(frozen=True)
class QueryCacheStats:
    hits: int
    misses: int
    entries: int
    max_entries: int

    @property
    def hit_rate(self) -> float:
        """Hits over lookups; 0.0 before the first lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0


class QueryVectorCache:
    """At most `max_entries` query vectors; the least recently used goes first. 0 disables it."""

    def __init__(self, *, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be 0 or more, got {max_entries}")
        self.max_entries = max_entries
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0

    def vector(self, *, encoder: str, text: str, encode: Callable[[str], np.ndarray]) -> np.ndarray:
        """The cached vector of `text` under `encoder`, else `encode(text)` stored and returned.

        `encode` runs outside the lock, so two threads missing the same query both encode it (the
        same vector; the second store wins) rather than one waiting for the other's model call.
        The returned array is read-only: it is shared by every caller of the same query.
        """
        key = (encoder, normalised_query(text))
        with self._lock:
            cached = self._vectors.get(key)
            if cached is not None:
                self._vectors.move_to_end(key)
                self._hits += 1
                return cached
            self._misses += 1
        vector = np.array(encode(key[1]), dtype=np.float32)
        vector.setflags(write=False)
        if self.max_entries:
            with self._lock:
                self._vectors[key] = vector
                self._vectors.move_to_end(key)
                while len(self._vectors) > self.max_entries:
                    self._vectors.popitem(last=False)
        return vector

    def stats(self) -> QueryCacheStats:
        with self._lock:
            return QueryCacheStats(self._hits, self._misses, len(self._vectors), self.max_entries)

    def clear(self) -> None:
        """Forget every vector and the counts."""
        with self._lock:
            self._vectors.clear()
            self._hits = 0
            self._misses = 0
