"""Celery tasks of curation: each takes ids and calls one service (see curation.services.queue)."""

from celery import shared_task

from curation.services import queue


@shared_task
def turn_holds_expired_delete_task() -> None:
    queue.turn_holds_expired_delete()
