"""Celery tasks: each takes ids and calls one service (see curation.services.embeddings)."""

from celery import shared_task

from curation.services import embeddings, queue


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
def turn_holds_expired_delete_task() -> None:
    queue.turn_holds_expired_delete()
