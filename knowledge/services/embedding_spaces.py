"""Retiring embedding spaces that no retriever version serves from any more, restoring one that
is needed again, and dropping the vectors and HNSW index of spaces retired for longer than
RAGLOOP_RETIRED_SPACE_GRACE_SECONDS.

Knowledge does not know about model versions: training decides that a space is unused (its
version was rejected, or retired by a promotion or rollback, and no live version or candidate
still reads it) and calls `embedding_space_retire`. This module only refuses the spaces serving
itself names: the base space and the knowledge base's live space. A retired space keeps its
vectors through the grace period, so a rollback soon after a promotion can put it back at once
(`embedding_space_restore` embeds the chunks ingested meanwhile); after that the beat sweeper
(`embedding_spaces_drop_expired`) deletes its vectors and index, and only a full re-embedding
(the same restore) makes it servable again.
"""

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from knowledge.models import ChunkEmbedding, EmbeddingJob, EmbeddingSpace, KnowledgeBase
from knowledge.services.embeddings import embedding_job_start, embedding_space_index_build_ensure
from knowledge.services.knowledge_bases import BASE_RETRIEVER_VERSION

logger = logging.getLogger(__name__)

_UNFINISHED_JOBS = [EmbeddingJob.Status.QUEUED, EmbeddingJob.Status.RUNNING]


def grace_seconds() -> int:
    return int(settings.RAGLOOP_RETIRED_SPACE_GRACE_SECONDS)


def embedding_space_retire(*, space: EmbeddingSpace) -> bool:
    """Stop embedding new documents into the space; True if it was retired now.

    Refused (False) for a space already retired, the base space, and the knowledge base's
    live space: those serve, whatever the caller believes.
    """
    with transaction.atomic():
        space = EmbeddingSpace.objects.select_for_update().get(pk=space.pk)
        if space.status == EmbeddingSpace.Status.RETIRED or space.retriever_version == BASE_RETRIEVER_VERSION:
            return False
        if KnowledgeBase.objects.filter(pk=space.knowledge_base_id, live_space=space).exists():
            return False
        now = timezone.now()
        space.status = EmbeddingSpace.Status.RETIRED
        space.retired_at = now
        space.save(update_fields=["status", "retired_at"])
        # An unfinished job would go on writing vectors nothing reads; its batch tasks see it failed.
        EmbeddingJob.objects.filter(space=space, status__in=_UNFINISHED_JOBS).update(
            status=EmbeddingJob.Status.FAILED, error="The embedding space was retired.", finished_at=now
        )
    logger.info("Embedding space %s retired", space)
    return True


def embedding_space_restore(*, space: EmbeddingSpace) -> EmbeddingJob | None:
    """Make a retired space servable again; returns the job embedding what it lacks (or None).

    With its vectors still there the space is ready at once, as a live space is while the
    chunks of a fresh ingest are being embedded; with its vectors dropped it is building until
    every chunk has one again (then the embedding job builds its HNSW index if it needs one).
    """
    with transaction.atomic():
        space = EmbeddingSpace.objects.select_for_update().get(pk=space.pk)
        if space.status != EmbeddingSpace.Status.RETIRED:
            return None
        dropped = space.vectors_dropped_at is not None
        space.status = EmbeddingSpace.Status.BUILDING if dropped else EmbeddingSpace.Status.READY
        space.retired_at = None
        space.vectors_dropped_at = None
        space.save(update_fields=["status", "retired_at", "vectors_dropped_at"])
        job = embedding_job_start(space=space)
        if dropped and job is None:  # a knowledge base without chunks: an empty space is complete
            EmbeddingSpace.objects.filter(pk=space.pk).update(status=EmbeddingSpace.Status.READY)
    logger.info("Embedding space %s restored (%s)", space, "re-embedding every chunk" if dropped else "vectors kept")
    return job


def embedding_spaces_drop_expired(*, now: datetime | None = None) -> list[int]:
    """Drop the vectors and HNSW index of every space retired longer than the grace period;
    returns the ids of the spaces dropped. Run by beat; must run outside a transaction
    (DROP INDEX CONCURRENTLY)."""
    cutoff = (now or timezone.now()) - timedelta(seconds=grace_seconds())
    expired = list(
        EmbeddingSpace.objects.filter(
            status=EmbeddingSpace.Status.RETIRED, vectors_dropped_at__isnull=True, retired_at__lte=cutoff
        ).values_list("pk", flat=True)
    )
    return [space_id for space_id in expired if _vectors_drop(space_id)]


def _vectors_drop(space_id: int) -> bool:
    space = EmbeddingSpace.objects.get(pk=space_id)
    if space.status != EmbeddingSpace.Status.RETIRED:
        return False  # restored since it was listed
    # CONCURRENTLY: retrieval from the other spaces' indexes of the same table is never blocked.
    with connection.cursor() as cursor:
        cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {space.hnsw_index_name}")
    with transaction.atomic():
        space = EmbeddingSpace.objects.select_for_update().get(pk=space_id)
        if space.status != EmbeddingSpace.Status.RETIRED or space.vectors_dropped_at is not None:
            # Restored between the check above and the drop: its vectors stay, its index is
            # gone, so say so and build it again if the space is large enough to need one.
            if space.hnsw_index_built:
                EmbeddingSpace.objects.filter(pk=space_id).update(hnsw_index_built=False)
                space.hnsw_index_built = False
                transaction.on_commit(lambda: embedding_space_index_build_ensure(space=space))
            return False
        deleted, _ = ChunkEmbedding.objects.filter(space=space).delete()
        space.vectors_dropped_at = timezone.now()
        space.hnsw_index_built = False
        space.save(update_fields=["vectors_dropped_at", "hnsw_index_built"])
    logger.info("Embedding space %s: dropped %s vectors and its HNSW index", space, deleted)
    return True
