"""Embedding jobs: progress from the database, resumable after a killed worker, HNSW per space."""

from datetime import timedelta

import pytest
from django.utils import timezone

from knowledge.models import Chunk, ChunkEmbedding, EmbeddingJob
from knowledge.selectors import passages_retrieve
from knowledge.services.documents import documents_ingest
from knowledge.services.embeddings import (
    chunk_batch_embed,
    embedding_job_refresh,
    embedding_jobs_resume_stalled,
    embedding_space_index_build,
)


@pytest.fixture
def ingested(knowledge_base, sample_documents):
    [job] = documents_ingest(knowledge_base=knowledge_base, documents=sample_documents).jobs
    return job


def test_batches_fill_the_space_and_the_job_succeeds(knowledge_base, ingested):
    chunk_ids = sorted(Chunk.objects.values_list("pk", flat=True))
    first, rest = chunk_ids[:2], chunk_ids[2:]

    assert chunk_batch_embed(job_id=ingested.pk, chunk_ids=first) == 2
    job = EmbeddingJob.objects.get(pk=ingested.pk)
    assert (job.embedded_chunks, job.total_chunks, job.status) == (2, len(chunk_ids), EmbeddingJob.Status.QUEUED)
    assert job.progress_percent == int(100 * 2 / len(chunk_ids))

    chunk_batch_embed(job_id=ingested.pk, chunk_ids=rest)
    job.refresh_from_db()
    assert job.status == EmbeddingJob.Status.SUCCEEDED
    assert job.embedded_chunks == job.total_chunks == len(chunk_ids)
    assert job.finished_at is not None
    vectors = ChunkEmbedding.objects.filter(space=knowledge_base.live_space)
    assert vectors.count() == len(chunk_ids)
    assert len(vectors.first().embedding) == 384


def test_a_redelivered_batch_writes_nothing_twice(knowledge_base, ingested):
    chunk_ids = list(Chunk.objects.values_list("pk", flat=True))
    chunk_batch_embed(job_id=ingested.pk, chunk_ids=chunk_ids)
    assert chunk_batch_embed(job_id=ingested.pk, chunk_ids=chunk_ids) == 0
    assert ChunkEmbedding.objects.count() == len(chunk_ids)


def test_the_sweeper_redispatches_only_stalled_jobs(knowledge_base, ingested, monkeypatch):
    sent = []
    monkeypatch.setattr("knowledge.tasks.chunk_batch_embed_task.delay", lambda job_id, ids: sent.append((job_id, ids)))
    chunk_ids = sorted(Chunk.objects.values_list("pk", flat=True))
    chunk_batch_embed(job_id=ingested.pk, chunk_ids=chunk_ids[:1])  # a worker wrote one batch, then died

    assert embedding_jobs_resume_stalled() == []  # heartbeat is fresh
    EmbeddingJob.objects.filter(pk=ingested.pk).update(
        status=EmbeddingJob.Status.RUNNING, heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    assert embedding_jobs_resume_stalled() == [ingested.pk]
    # only the chunks still missing are sent again
    assert [ids for _, ids in sent] == [chunk_ids[1:]]


@pytest.mark.django_db(transaction=True)  # CREATE INDEX CONCURRENTLY runs outside a transaction, as in a worker
def test_retrieval_through_the_hnsw_index_matches_exact_search(embedded_knowledge_base):
    space = embedded_knowledge_base.live_space
    exact = passages_retrieve(space=space, query="Does vitamin D prevent hip fractures?", k=3)
    assert exact[0].document_external_id == "d-vitd"

    assert embedding_space_index_build(space_id=space.pk) is True
    space.refresh_from_db()
    assert space.hnsw_index_built
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [space.hnsw_index_name])
        [(definition,)] = cursor.fetchall()
    assert "hnsw" in definition and f"space_id = {space.pk}" in definition and "vector(384)" in definition

    approximate = passages_retrieve(space=space, query="Does vitamin D prevent hip fractures?", k=3)
    assert [p.chunk_id for p in approximate] == [p.chunk_id for p in exact]
    assert [round(p.score, 5) for p in approximate] == [round(p.score, 5) for p in exact]


def test_refresh_counts_chunks_added_while_the_job_runs(knowledge_base, ingested, sample_documents):
    from rag.documents import SourceDocument

    documents_ingest(
        knowledge_base=knowledge_base,
        documents=[SourceDocument(external_id="late", title="Late", text="A document that arrived later.", metadata={})],
    )
    job = embedding_job_refresh(job_id=ingested.pk)
    assert job.total_chunks == Chunk.objects.count()
    assert EmbeddingJob.objects.filter(space=knowledge_base.live_space).count() == 1  # the same job took them on


def test_a_building_space_becomes_ready_and_says_so_when_every_chunk_has_a_vector(knowledge_base, ingested, django_capture_on_commit_callbacks):
    from knowledge.models import EmbeddingSpace
    from knowledge.services.embeddings import embedding_job_start
    from knowledge.signals import embedding_space_ready

    chunk_batch_embed(job_id=ingested.pk, chunk_ids=list(Chunk.objects.values_list("pk", flat=True)))
    candidate = EmbeddingSpace.objects.create(
        knowledge_base=knowledge_base, retriever_version="retriever-v1", model_reference="base:all-MiniLM-L6-v2", dimensions=384
    )
    heard = []
    embedding_space_ready.connect(lambda sender, space, **kw: heard.append(space.pk), weak=False, dispatch_uid="t")
    try:
        job = embedding_job_start(space=candidate)
        ids = sorted(Chunk.objects.values_list("pk", flat=True))
        with django_capture_on_commit_callbacks(execute=True):
            chunk_batch_embed(job_id=job.pk, chunk_ids=ids[:1])
        candidate.refresh_from_db()
        assert candidate.status == "building" and heard == []
        with django_capture_on_commit_callbacks(execute=True):
            chunk_batch_embed(job_id=job.pk, chunk_ids=ids[1:])
        candidate.refresh_from_db()
        assert candidate.status == "ready" and heard == [candidate.pk]
    finally:
        embedding_space_ready.disconnect(dispatch_uid="t")
