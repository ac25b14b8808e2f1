"""Celery tasks of the embedding pipeline: each takes ids and calls one service
(see knowledge.services.embeddings)."""

from celery import shared_task

from knowledge.services import embedding_spaces, embeddings


@shared_task
def embedding_job_dispatch_task(job_id: int) -> None:
    embeddings.embedding_job_dispatch(job_id=job_id)


@shared_task
def chunk_batch_embed_task(job_id: int, chunk_ids: list[int]) -> None:
    embeddings.chunk_batch_embed(job_id=job_id, chunk_ids=chunk_ids)


@shared_task
def embedding_jobs_resume_stalled_task() -> None:
    embeddings.embedding_jobs_resume_stalled()


@shared_task
def embedding_space_index_build_task(space_id: int) -> None:
    embeddings.embedding_space_index_build(space_id=space_id)


@shared_task
def embedding_spaces_drop_expired_task() -> None:
    embedding_spaces.embedding_spaces_drop_expired()
