"""documents_ingest: chunks stored, re-ingestion idempotent, changed content replaced atomically."""

import pytest

from knowledge.errors import InvalidInput
from knowledge.models import Chunk, ChunkEmbedding, Document, EmbeddingJob
from knowledge.services.documents import documents_ingest
from rag.documents import SourceDocument
from tests.conftest import embed_everything_now


def test_ingest_stores_documents_and_chunks_and_opens_an_embedding_job(knowledge_base, sample_documents):
    result = documents_ingest(knowledge_base=knowledge_base, documents=sample_documents)

    assert (result.created, result.updated, result.unchanged) == (4, 0, 0)
    assert Document.objects.filter(knowledge_base=knowledge_base).count() == 4
    chunks = Chunk.objects.filter(knowledge_base=knowledge_base)
    assert result.chunks_created == chunks.count() >= 4
    document = Document.objects.get(external_id="d-vitd")
    assert document.title == "Vitamin D and bone health"
    assert "hip fractures" in " ".join(document.chunks.values_list("text", flat=True))
    [job] = result.jobs
    assert job.space == knowledge_base.live_space
    assert (job.total_chunks, job.embedded_chunks, job.status) == (chunks.count(), 0, EmbeddingJob.Status.QUEUED)


def test_reingesting_unchanged_documents_writes_nothing(knowledge_base, sample_documents):
    documents_ingest(knowledge_base=knowledge_base, documents=sample_documents)
    embed_everything_now(knowledge_base)
    chunk_ids = set(Chunk.objects.values_list("pk", flat=True))

    again = documents_ingest(knowledge_base=knowledge_base, documents=sample_documents)

    assert (again.created, again.updated, again.unchanged, again.chunks_created) == (0, 0, 4, 0)
    assert again.jobs == []
    assert set(Chunk.objects.values_list("pk", flat=True)) == chunk_ids
    assert ChunkEmbedding.objects.count() == len(chunk_ids)


def test_changed_content_replaces_the_chunks_and_their_embeddings(knowledge_base, sample_documents):
    documents_ingest(knowledge_base=knowledge_base, documents=sample_documents)
    embed_everything_now(knowledge_base)
    old_chunks = set(Chunk.objects.filter(document__external_id="d-coffee").values_list("pk", flat=True))

    changed = SourceDocument(external_id="d-coffee", title="Coffee", text="Green tea contains less caffeine than coffee.", metadata={})
    result = documents_ingest(knowledge_base=knowledge_base, documents=[changed])

    assert (result.created, result.updated, result.unchanged) == (0, 1, 0)
    new_chunks = Chunk.objects.filter(document__external_id="d-coffee")
    assert [c.text for c in new_chunks] == ["Green tea contains less caffeine than coffee."]
    assert not Chunk.objects.filter(pk__in=old_chunks).exists()
    assert not ChunkEmbedding.objects.filter(chunk_id__in=old_chunks).exists()
    assert Document.objects.get(external_id="d-coffee").title == "Coffee"
    # Other documents keep their vectors; only the new chunk waits for one.
    assert ChunkEmbedding.objects.count() == Chunk.objects.count() - 1


def test_duplicate_ids_in_one_ingest_are_refused_and_nothing_is_written(knowledge_base, sample_documents):
    duplicate = SourceDocument(external_id="d-vitd", title="again", text="Another text.", metadata={})
    with pytest.raises(InvalidInput, match="d-vitd"):
        documents_ingest(knowledge_base=knowledge_base, documents=[*sample_documents, duplicate])
    assert Document.objects.count() == 0
    assert Chunk.objects.count() == 0


def test_an_empty_ingest_is_refused(knowledge_base):
    with pytest.raises(InvalidInput, match="No documents"):
        documents_ingest(knowledge_base=knowledge_base, documents=[])


def test_long_documents_are_chunked_within_the_model_limit_with_overlap(knowledge_base):
    sentences = [f"Sentence number {i} talks about protein folding and enzyme kinetics in yeast cells." for i in range(120)]
    documents_ingest(
        knowledge_base=knowledge_base,
        documents=[SourceDocument(external_id="long", title="Long", text=" ".join(sentences), metadata={})],
    )
    chunks = list(Chunk.objects.filter(document__external_id="long").order_by("order"))
    assert len(chunks) > 3
    assert all(c.token_count <= knowledge_base.chunk_max_tokens for c in chunks)
    assert [c.order for c in chunks] == list(range(len(chunks)))
    # consecutive chunks overlap: the sentence that opens a chunk also closed part of the one before
    for before, after in zip(chunks, chunks[1:]):
        opening = after.text.split(". ")[0]
        assert opening in before.text
        assert not before.text.startswith(opening)  # an overlap, not a repeat of the whole chunk
