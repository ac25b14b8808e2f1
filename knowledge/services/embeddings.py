"""Embedding jobs: fill an embedding space with the vectors of every chunk that has none yet.

A job is a row; Celery tasks move it. `embedding_job_dispatch` splits the missing chunks into
batches, one task each; `chunk_batch_embed` embeds one batch and writes its vectors in one
statement. Every step recomputes what is missing from the database, so a redelivered or
repeated task does no harm and a killed worker loses at most its unfinished batch, which the
sweeper (`embedding_jobs_resume_stalled`, run by beat) or a re-run of the ingest sends again.
"""

import logging
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

from knowledge.errors import QueueUnavailable
from knowledge.models import Chunk, ChunkEmbedding, EmbeddingJob, EmbeddingSpace
from knowledge.services.knowledge_bases import space_embedder
from knowledge.signals import embedding_space_ready

logger = logging.getLogger(__name__)

_UNFINISHED = [EmbeddingJob.Status.QUEUED, EmbeddingJob.Status.RUNNING]


def _missing_chunks(space: EmbeddingSpace):
    return Chunk.objects.filter(knowledge_base_id=space.knowledge_base_id).exclude(embeddings__space=space)


def _enqueue_dispatch(job_id: int) -> None:
    from knowledge.tasks import (
        embedding_job_dispatch_task,  # tasks import services, not the reverse
    )

    try:
        embedding_job_dispatch_task.delay(job_id)
    except (KombuOperationalError, RedisError, OSError) as error:
        # The chunks and the job row are committed: the stalled-job sweeper dispatches the job
        # once the queue is back (embedding_jobs_resume_stalled), so nothing is lost; the
        # caller learns that the work has not started.
        logger.warning("Embedding job %s could not be queued (%s); the sweeper will dispatch it", job_id, error)
        raise QueueUnavailable(
            "The documents are stored, but the task queue cannot be reached, so their embedding has not "
            f"started (job {job_id}); it starts by itself once the queue is back."
        ) from error


def embedding_job_start(*, space: EmbeddingSpace) -> EmbeddingJob | None:
    """Start (or wake) the job that embeds the space's missing chunks; None if nothing is missing.

    The dispatch task is sent after the surrounding transaction commits, so the worker sees
    the chunks.
    """
    with transaction.atomic():
        locked = EmbeddingSpace.objects.select_for_update().get(pk=space.pk)
        if locked.status == EmbeddingSpace.Status.RETIRED:
            return None  # no version serves from it: new chunks are not embedded into it
        if not _missing_chunks(space).exists():
            return None
        job = EmbeddingJob.objects.filter(space=space, status__in=_UNFINISHED).first()
        if job is None:
            job = EmbeddingJob.objects.create(space=space)
        _refresh_counts(job)
        job.save(update_fields=["total_chunks", "embedded_chunks"])
        transaction.on_commit(lambda: _enqueue_dispatch(job.pk))
    return job


def _refresh_counts(job: EmbeddingJob) -> None:
    job.total_chunks = Chunk.objects.filter(knowledge_base_id=job.space.knowledge_base_id).count()
    job.embedded_chunks = ChunkEmbedding.objects.filter(space_id=job.space_id).count()


def embedding_job_dispatch(*, job_id: int) -> int:
    """Send one batch task per slice of missing chunks; returns how many batches were sent."""
    from knowledge.tasks import chunk_batch_embed_task

    with transaction.atomic():
        job = EmbeddingJob.objects.select_for_update().select_related("space").get(pk=job_id)
        if job.is_finished:
            return 0
        now = timezone.now()
        job.status = EmbeddingJob.Status.RUNNING
        job.started_at = job.started_at or now
        job.heartbeat_at = now
        job.save(update_fields=["status", "started_at", "heartbeat_at"])
        missing = list(_missing_chunks(job.space).order_by("pk").values_list("pk", flat=True))
    if not missing:
        embedding_job_refresh(job_id=job_id)
        return 0
    size = settings.RAGLOOP_EMBED_BATCH_SIZE
    batches = [missing[i : i + size] for i in range(0, len(missing), size)]
    for batch in batches:
        chunk_batch_embed_task.delay(job_id, batch)
    return len(batches)


def chunk_batch_embed(*, job_id: int, chunk_ids: list[int]) -> int:
    """Embed the chunks of this batch that still lack a vector; returns how many were written."""
    job = EmbeddingJob.objects.select_related("space").get(pk=job_id)
    if job.status == EmbeddingJob.Status.FAILED or job.space.status == EmbeddingSpace.Status.RETIRED:
        return 0
    space = job.space
    chunks = list(
        Chunk.objects.filter(pk__in=chunk_ids).exclude(embeddings__space=space).order_by("pk").values_list("pk", "text")
    )
    written = 0
    if chunks:
        try:
            embedder = space_embedder(space)
            vectors = embedder.encode_documents([text for _, text in chunks])
        except Exception as error:  # a broken model fails the job visibly instead of retrying forever
            embedding_job_fail(job_id=job_id, error=f"Embedding failed: {error}")
            raise
        # ignore_conflicts: a concurrent duplicate of this batch may have written some already.
        ChunkEmbedding.objects.bulk_create(
            [ChunkEmbedding(chunk_id=pk, space=space, embedding=vector) for (pk, _), vector in zip(chunks, vectors)],
            ignore_conflicts=True,
        )
        written = len(chunks)
    embedding_job_refresh(job_id=job_id)
    return written


def embedding_job_refresh(*, job_id: int) -> EmbeddingJob:
    """Recount progress from the database and finish the job when every chunk has a vector."""
    with transaction.atomic():
        job = EmbeddingJob.objects.select_for_update().select_related("space").get(pk=job_id)
        if job.is_finished:
            return job
        _refresh_counts(job)
        job.heartbeat_at = timezone.now()
        fields = ["total_chunks", "embedded_chunks", "heartbeat_at"]
        if not _missing_chunks(job.space).exists():
            job.status = EmbeddingJob.Status.SUCCEEDED
            job.finished_at = job.heartbeat_at
            fields += ["status", "finished_at"]
            # A new retriever version's space becomes servable once every chunk has a vector.
            became_ready = EmbeddingSpace.objects.filter(
                pk=job.space_id, status=EmbeddingSpace.Status.BUILDING
            ).update(status=EmbeddingSpace.Status.READY)
            if became_ready:
                space = job.space
                transaction.on_commit(lambda: embedding_space_ready.send(sender=EmbeddingSpace, space=space))
        job.save(update_fields=fields)
    if job.status == EmbeddingJob.Status.SUCCEEDED and _needs_hnsw_index(job.space):
        from knowledge.tasks import embedding_space_index_build_task

        embedding_space_index_build_task.delay(job.space_id)
    return job


def embedding_job_fail(*, job_id: int, error: str) -> None:
    EmbeddingJob.objects.filter(pk=job_id, status__in=_UNFINISHED).update(
        status=EmbeddingJob.Status.FAILED, error=error[:5000], finished_at=timezone.now()
    )


def embedding_jobs_resume_stalled() -> list[int]:
    """Re-dispatch unfinished jobs whose heartbeat stopped (a worker died mid-job)."""
    cutoff = timezone.now() - timedelta(seconds=settings.RAGLOOP_EMBEDDING_STALL_SECONDS)
    stalled = list(
        EmbeddingJob.objects.filter(status__in=_UNFINISHED)
        .exclude(heartbeat_at__gte=cutoff)
        .exclude(heartbeat_at__isnull=True, created_at__gte=cutoff)
        .values_list("pk", flat=True)
    )
    for job_id in stalled:
        logger.warning("Embedding job %s stalled; dispatching its missing chunks again", job_id)
        embedding_job_dispatch(job_id=job_id)
    return stalled


def _needs_hnsw_index(space: EmbeddingSpace) -> bool:
    if space.hnsw_index_built:
        return False
    return ChunkEmbedding.objects.filter(space=space).count() > settings.RAGLOOP_EXACT_SEARCH_MAX_CHUNKS


def embedding_space_index_missing(space: EmbeddingSpace) -> bool:
    """True when the space is large enough for its HNSW index but has none yet, so retrieval
    from it would scan every vector exactly (see knowledge.selectors.passages_retrieve)."""
    return _needs_hnsw_index(space)


def _index_build_lock_sql(function: str) -> str:
    # The one-bigint form of the advisory lock: a key space of its own (pg_locks objsubid 1),
    # apart from training's (knowledge base, component) two-integer locks (objsubid 2).
    return f"SELECT {function}(%s::bigint)"


def embedding_space_index_building(space: EmbeddingSpace) -> bool:
    """True while some session is building the space's HNSW index (it holds the build lock)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 "
            "AND classid = 0 AND objid = %s AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))",
            [int(space.pk)],
        )
        return bool(cursor.fetchone()[0])


def embedding_space_index_build_ensure(*, space: EmbeddingSpace) -> bool:
    """Queue the build of a missing HNSW index unless one is running; True if queued now.

    Sent at once rather than after commit: a caller that refuses a promotion because of the
    missing index rolls its transaction back, and the build must still happen. The space row
    is already committed and the build is idempotent, so an early or duplicate message is harmless.
    """
    if not _needs_hnsw_index(space) or embedding_space_index_building(space):
        return False
    from knowledge.tasks import embedding_space_index_build_task

    embedding_space_index_build_task.delay(space.pk)
    return True


def embedding_space_index_build(*, space_id: int) -> bool:
    """Build the space's partial HNSW index (cosine) without blocking writes; True if built now.

    One index per space, restricted to its rows and cast to its dimensions, so a query of
    that space scans only its own graph and is never cut short by a filter. A session
    advisory lock keyed on the space makes a second, concurrent build return at once instead
    of dropping the index the first one is building.
    """
    space = EmbeddingSpace.objects.get(pk=space_id)
    if space.hnsw_index_built or space.status == EmbeddingSpace.Status.RETIRED:
        return False
    with connection.cursor() as cursor:
        cursor.execute(_index_build_lock_sql("pg_try_advisory_lock"), [int(space.pk)])
        if not cursor.fetchone()[0]:
            return False
    try:
        return _index_build(space)
    finally:
        with connection.cursor() as cursor:
            cursor.execute(_index_build_lock_sql("pg_advisory_unlock"), [int(space.pk)])


def _index_build(space: EmbeddingSpace) -> bool:
    if EmbeddingSpace.objects.filter(pk=space.pk, hnsw_index_built=True).exists():
        return False  # built by a session that held the lock just before us
    # CONCURRENTLY cannot run inside a transaction; Celery tasks run in autocommit mode.
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {space.hnsw_index_name}")  # a failed earlier build leaves an invalid index
        # A graph that outgrows maintenance_work_mem builds several times slower (bench:
        # 212 s with the default 64MB vs 55 s with 512MB at 100k vectors).
        # https://github.com/pgvector/pgvector#index-build-time
        cursor.execute("SELECT set_config('maintenance_work_mem', %s, false)", [settings.RAGLOOP_HNSW_BUILD_MEMORY])
        try:
            cursor.execute(
                f"CREATE INDEX CONCURRENTLY {space.hnsw_index_name} ON curation_chunkembedding "
                f"USING hnsw ((embedding::vector({int(space.dimensions)})) vector_cosine_ops) "
                f"WHERE space_id = {int(space.pk)}"
            )
        finally:
            cursor.execute("RESET maintenance_work_mem")
    EmbeddingSpace.objects.filter(pk=space.pk).update(hnsw_index_built=True)
    return True


def as_vector_literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{float(x):.7g}" for x in vector) + "]"
