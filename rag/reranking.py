"""Second-stage reranking: a cross-encoder reads each (query, passage) pair together and scores
it, and the first stage's top N candidates are put in the order of those scores.

Plain Python: the knowledge app decides when a reranker serves (a live reranker version) and
which candidates it sees; this module only loads a cross-encoder folder and scores and orders.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

# What a reranker reads of each pair: query and passage together, truncated to this many
# tokens (the MiniLM encoder's window is 512; chunks are ~200 tokens, so 256 leaves room).
DEFAULT_MAX_LENGTH = 256
SCORE_BATCH_SIZE = 32


class Reranker:
    """A cross-encoder loaded from a local folder (a sentence-transformers CrossEncoder save)."""

    def __init__(self, model_path: str | Path, *, device: str | None = None, max_length: int | None = None) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_dir():
            # Without this check sentence-transformers would treat the path as a hub name.
            raise FileNotFoundError(f"reranker model directory not found: {self.model_path}")
        from sentence_transformers.cross_encoder import CrossEncoder

        self.model = CrossEncoder(str(self.model_path), device=device, max_length=max_length, local_files_only=True)

    def scores(self, query: str, passages: Sequence[str]) -> list[float]:
        """The model's score of each (query, passage) pair, in the passages' order (higher: more relevant)."""
        if not passages:
            return []
        values = self.model.predict(
            [(query, passage) for passage in passages], batch_size=SCORE_BATCH_SIZE, show_progress_bar=False,
            convert_to_numpy=True,
        )  # fmt: skip
        return [float(value) for value in values]


@functools.lru_cache(maxsize=4)
def load_reranker(model_path: str) -> Reranker:
    """A reranker loaded once per process and folder (serving and evaluation share it)."""
    return Reranker(model_path)


def rerank_order(scores: Sequence[float]) -> list[int]:
    """The candidates' indexes by descending score; equal scores keep the first stage's order."""
    return sorted(range(len(scores)), key=lambda index: (-scores[index], index))
