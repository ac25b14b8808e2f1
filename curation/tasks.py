"""Celery tasks of curation: each takes ids and calls one service (see curation.services)."""

from celery import shared_task

from curation.services import queue, suggestions, synthetic_questions
from knowledge.models import KnowledgeBase


@shared_task
def turn_holds_expired_delete_task() -> None:
    queue.turn_holds_expired_delete()


@shared_task
def suggestions_compute_task(turn_ids: list[int]) -> None:
    suggestions.turn_suggestions_compute(turn_ids=turn_ids)


@shared_task
def suggestion_agents_measure_task(knowledge_base_id: int) -> None:
    knowledge_base = KnowledgeBase.objects.filter(pk=knowledge_base_id).first()
    if knowledge_base is not None:  # deleted meanwhile: nothing to measure
        suggestions.suggestion_agents_measure(knowledge_base=knowledge_base)


@shared_task
def synthetic_question_job_execute_task(job_id: int) -> None:
    synthetic_questions.synthetic_question_job_execute(job_id=job_id)
