"""Retired embedding spaces: no vectors for new documents, the base and live spaces kept, the
grace-period sweep that drops vectors and the HNSW index, restoring, and index builds on demand."""

from datetime import timedelta

import pytest
from django.db import connection, connections

from knowledge.models import ChunkEmbedding, EmbeddingJob, EmbeddingSpace
from knowledge.services.documents import documents_ingest
from knowledge.services.embedding_spaces import (
    embedding_space_restore,
    embedding_space_retire,
    embedding_spaces_drop_expired,
)
from knowledge.services.embeddings import (
    embedding_space_index_build,
    embedding_space_index_build_ensure,
    embedding_space_index_building,
)
from rag.documents import SourceDocument
from tests.conftest import embed_everything_now, wait_until

LATE_DOCUMENT = SourceDocument(
    external_id="d-late", title="Iron", text="Iron deficiency causes anaemia and tiredness.", metadata={}
)


def _space(knowledge_base, retriever_version: str) -> EmbeddingSpace:
    """A second space with the base model's vectors, as a trained full-mode version would have."""
    space = EmbeddingSpace.objects.create(
        knowledge_base=knowledge_base,
        retriever_version=retriever_version,
        model_reference="base:all-MiniLM-L6-v2",
        dimensions=384,
    )
    embed_everything_now(knowledge_base)
    space.refresh_from_db()
    assert space.status == EmbeddingSpace.Status.READY
    return space


def _vectors_of_late_document(space) -> int:
    return ChunkEmbedding.objects.filter(space=space, chunk__document__external_id="d-late").count()


def _index_exists(name: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_indexes WHERE indexname = %s", [name])
        return cursor.fetchone()[0] == 1


def test_a_retired_space_gets_no_vectors_for_a_new_document_while_the_others_do(embedded_knowledge_base):
    kb = embedded_knowledge_base
    candidate, retired = _space(kb, "retriever-v1"), _space(kb, "retriever-v2")
    before = ChunkEmbedding.objects.filter(space=retired).count()

    assert embedding_space_retire(space=retired) is True
    result = documents_ingest(knowledge_base=kb, documents=[LATE_DOCUMENT])
    embed_everything_now(kb)

    assert {job.space_id for job in result.jobs} == {kb.live_space_id, candidate.pk}
    assert _vectors_of_late_document(kb.live_space) == _vectors_of_late_document(candidate) == 1
    assert _vectors_of_late_document(retired) == 0
    assert ChunkEmbedding.objects.filter(space=retired).count() == before  # kept through the grace period
    retired.refresh_from_db()
    assert retired.status == EmbeddingSpace.Status.RETIRED and retired.retired_at is not None
    assert retired.state_label == "retired"


def test_the_base_and_the_live_space_are_never_retired(embedded_knowledge_base):
    kb = embedded_knowledge_base
    other = _space(kb, "retriever-v1")
    kb.live_space = other
    kb.save(update_fields=["live_space"])
    base = kb.embedding_spaces.get(retriever_version="base")

    assert embedding_space_retire(space=base) is False
    assert embedding_space_retire(space=other) is False
    assert set(kb.embedding_spaces.values_list("status", flat=True)) == {EmbeddingSpace.Status.READY}


def test_retiring_fails_the_unfinished_embedding_job_so_its_batches_write_nothing(embedded_knowledge_base):
    from knowledge.services.embeddings import chunk_batch_embed

    kb = embedded_knowledge_base
    space = EmbeddingSpace.objects.create(
        knowledge_base=kb, retriever_version="retriever-v1", model_reference="base:all-MiniLM-L6-v2", dimensions=384
    )
    [job] = [job for job in documents_ingest(knowledge_base=kb, documents=[LATE_DOCUMENT]).jobs if job.space_id == space.pk]

    embedding_space_retire(space=space)

    job.refresh_from_db()
    assert job.status == EmbeddingJob.Status.FAILED and "retired" in job.error
    assert chunk_batch_embed(job_id=job.pk, chunk_ids=list(kb.chunks.values_list("pk", flat=True))) == 0
    assert not ChunkEmbedding.objects.filter(space=space).exists()


def test_restoring_a_space_that_kept_its_vectors_makes_it_ready_and_embeds_what_came_meanwhile(embedded_knowledge_base):
    kb = embedded_knowledge_base
    space = _space(kb, "retriever-v1")
    embedding_space_retire(space=space)
    documents_ingest(knowledge_base=kb, documents=[LATE_DOCUMENT])

    job = embedding_space_restore(space=space)

    space.refresh_from_db()
    assert (space.status, space.retired_at) == (EmbeddingSpace.Status.READY, None)
    assert job is not None and job.space_id == space.pk
    embed_everything_now(kb)
    assert _vectors_of_late_document(space) == 1
    assert embedding_space_restore(space=space) is None  # not retired: nothing to do


@pytest.mark.django_db(transaction=True)  # DROP INDEX CONCURRENTLY runs outside a transaction, as in a worker
def test_the_sweep_drops_vectors_and_index_only_after_the_grace_period(embedded_knowledge_base, settings):
    settings.RAGLOOP_RETIRED_SPACE_GRACE_SECONDS = 3600
    kb = embedded_knowledge_base
    kept, retired = _space(kb, "retriever-v1"), _space(kb, "retriever-v2")
    for space in (kb.live_space, kept, retired):
        assert embedding_space_index_build(space_id=space.pk) is True
    embedding_space_retire(space=retired)
    retired.refresh_from_db()

    assert embedding_spaces_drop_expired(now=retired.retired_at + timedelta(seconds=3599)) == []
    assert ChunkEmbedding.objects.filter(space=retired).count() == kb.chunks.count()
    assert _index_exists(retired.hnsw_index_name)

    assert embedding_spaces_drop_expired(now=retired.retired_at + timedelta(seconds=3601)) == [retired.pk]

    retired.refresh_from_db()
    assert not ChunkEmbedding.objects.filter(space=retired).exists()
    assert not _index_exists(retired.hnsw_index_name)
    assert retired.vectors_dropped_at is not None and not retired.hnsw_index_built
    assert retired.state_label == "retired, vectors dropped"
    for space in (kb.live_space, kept):  # the other spaces keep everything
        assert _index_exists(space.hnsw_index_name)
        assert ChunkEmbedding.objects.filter(space=space).count() == kb.chunks.count()
    assert embedding_spaces_drop_expired(now=retired.retired_at + timedelta(days=30)) == []  # done once

    job = embedding_space_restore(space=retired)  # a full re-embedding makes it servable again
    retired.refresh_from_db()
    assert retired.status == EmbeddingSpace.Status.BUILDING and job.total_chunks == kb.chunks.count()
    embed_everything_now(kb)
    retired.refresh_from_db()
    assert retired.status == EmbeddingSpace.Status.READY and retired.vectors_dropped_at is None


def test_an_index_build_is_queued_only_for_a_large_space_without_one_and_none_running(
    embedded_knowledge_base, settings, monkeypatch
):
    import knowledge.tasks

    sent = []
    monkeypatch.setattr(knowledge.tasks.embedding_space_index_build_task, "delay", sent.append)
    space = embedded_knowledge_base.live_space
    settings.RAGLOOP_EXACT_SEARCH_MAX_CHUNKS = space.embeddings.count()
    assert embedding_space_index_build_ensure(space=space) is False  # small enough for an exact scan

    settings.RAGLOOP_EXACT_SEARCH_MAX_CHUNKS = 1
    wrapper = connections["default"]
    builder = wrapper.get_new_connection(wrapper.get_connection_params())  # another worker building it
    builder.autocommit = True
    try:
        with builder.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s::bigint)", [space.pk])
        assert embedding_space_index_building(space)
        assert embedding_space_index_build_ensure(space=space) is False
        assert embedding_space_index_build(space_id=space.pk) is False  # a second build returns at once
    finally:
        builder.close()
    # The server ends the closed session (and drops its lock) a moment later.
    wait_until(lambda: not embedding_space_index_building(space), timeout=10, interval=0.05, message="the lock to go")
    assert embedding_space_index_build_ensure(space=space) is True
    assert sent == [space.pk]


def test_beat_sweeps_retired_spaces_every_loop_tick(settings):
    import knowledge.tasks
    from config.celery import app

    assert knowledge.tasks.embedding_spaces_drop_expired_task.name in app.tasks
    entry = settings.CELERY_BEAT_SCHEDULE["drop-expired-embedding-spaces"]
    assert entry["schedule"] == float(settings.RAGLOOP_LOOP_TICK_SECONDS)
    assert entry["task"] in app.tasks
