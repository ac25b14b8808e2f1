"""Tests for the bundled MiniLM retriever encoder."""

from pathlib import Path

import numpy as np
import pytest

from rag.chunking import HFTokenCounter, chunk_budget
from rag.embedding import BASE_RETRIEVER_NAME, Embedder, base_retriever_path, load_embedder


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return load_embedder(base_retriever_path())


def test_base_retriever_is_bundled():
    assert BASE_RETRIEVER_NAME == "all-MiniLM-L6-v2"
    assert (base_retriever_path() / "model.safetensors").is_file()


def test_shape_and_window(embedder: Embedder):
    assert embedder.dimensions == 384
    assert embedder.max_tokens == 256
    assert chunk_budget(embedder.max_tokens) == 200


def test_vectors_are_float32_unit_rows(embedder: Embedder):
    documents = embedder.encode_documents(["Refunds take 14 days.", "We ship worldwide.", "Opening hours: 9-5."])
    queries = embedder.encode_queries(["how long do refunds take?"])

    assert documents.shape == (3, 384) and queries.shape == (1, 384)
    assert documents.dtype == np.float32 and queries.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(documents, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    # The refunds chunk is the nearest neighbour of the refunds question.
    assert int(np.argmax(documents @ queries[0])) == 0


def test_paraphrase_scores_higher_than_unrelated_text(embedder: Embedder):
    query, paraphrase, unrelated = embedder.encode_queries(
        [
            "How do I reset my password?",
            "What are the steps to change a forgotten password?",
            "The mitochondria is the powerhouse of the cell.",
        ]
    )

    assert float(query @ paraphrase) > 0.5
    assert float(query @ paraphrase) > float(query @ unrelated) + 0.3


def test_empty_input_gives_empty_matrix(embedder: Embedder):
    assert embedder.encode_documents([]).shape == (0, 384)
    assert embedder.encode_queries([]).shape == (0, 384)
    assert embedder.encode_queries([]).dtype == np.float32


def test_token_counter_uses_the_model_tokenizer(embedder: Embedder):
    counter = embedder.token_counter()

    assert isinstance(counter, HFTokenCounter)
    assert counter.token_offsets("Hello, world") == [(0, 5), (5, 6), (7, 12)]


def test_load_embedder_caches_by_resolved_path(embedder: Embedder, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(base_retriever_path().parent)

    assert load_embedder(base_retriever_path()) is embedder
    assert load_embedder(str(base_retriever_path())) is embedder
    assert load_embedder(Path("model")) is embedder


def test_missing_model_directory_is_reported(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="retriever model directory not found"):
        Embedder(tmp_path / "no-such-model")
