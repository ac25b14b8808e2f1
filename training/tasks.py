"""Celery tasks of the training app: each takes ids and calls one service (see training.services.runs).

Training and evaluation go to the `training` queue (concurrency 1, possibly on a GPU machine);
nothing here or in the services touches CUDA before a task runs.
"""

import logging

from celery import shared_task
from django.conf import settings

from training.services import evaluation_jobs, loop, queue_rescoring, runs

logger = logging.getLogger(__name__)

# How long a run whose component lock is held waits before its task tries again, and how many
# times: the holder is a live run (it ends) or one the sweeper failed (it stops at its next step).
LOCK_RETRY_SECONDS = 30
LOCK_RETRIES = 240  # two hours


@shared_task(bind=True, max_retries=LOCK_RETRIES)
def training_run_execute_task(self, run_id: int) -> str:
    outcome = runs.training_run_execute(run_id=run_id)
    # A cycle waiting for this run moves on now rather than at the next loop tick.
    loop.loop_cycles_advance_soon(training_run_id=run_id)
    if outcome == runs.Outcome.WAITING_FOR_LOCK:
        if self.request.retries >= self.max_retries:
            runs.training_run_fail_waiting(run_id=run_id)
            return outcome
        countdown = getattr(settings, "RAGLOOP_TRAINING_LOCK_RETRY_SECONDS", LOCK_RETRY_SECONDS)
        raise self.retry(countdown=countdown)
    return outcome


@shared_task
def evaluation_job_execute_task(job_id: int) -> None:
    job = evaluation_jobs.evaluation_job_execute(job_id=job_id)
    if job is not None and job.is_finished:
        loop.loop_cycles_advance_soon(candidate_id=job.candidate_id)


@shared_task
def training_runs_fail_stalled_task() -> None:
    runs.training_runs_fail_stalled()


@shared_task
def loop_cycle_advance_task(cycle_id: int) -> None:
    loop.loop_cycle_advance(cycle_id=cycle_id)


@shared_task
def loop_policies_check_task(knowledge_base_id: int | None = None) -> None:
    """New labels arrived (knowledge_base_id) or beat's tick (None: every knowledge base)."""
    loop.loop_policies_check(knowledge_base_id=knowledge_base_id)


@shared_task
def loop_tick_task() -> None:
    loop.loop_tick()


@shared_task
def turn_queue_rescore_task(knowledge_base_id: int | None = None) -> None:
    """Re-score one knowledge base's curation queue (a promotion), or queue it for every one (beat)."""
    if knowledge_base_id is None:
        queue_rescoring.turn_queues_rescore_all()
    else:
        queue_rescoring.turn_queue_rescore(knowledge_base_id=knowledge_base_id)


@shared_task
def webhook_message_deliver_task(message_id: int) -> None:
    from training.services.webhooks import webhook_message_deliver

    delivery = webhook_message_deliver(message_id=message_id)
    if delivery.retry_in is not None:
        # The next try is due then (the message row says so); if this message is lost,
        # webhook_messages_resend_due_task sends it again.
        webhook_message_deliver_task.apply_async((message_id,), countdown=delivery.retry_in)


@shared_task
def webhook_messages_resend_due_task() -> None:
    from training.services.webhooks import webhook_messages_resend_due

    webhook_messages_resend_due()


# An SMTP server that is down or refuses for a while (smtplib's errors are OSErrors): Celery's
# own retry with backoff is enough here, an e-mail is not a row anyone reads.
@shared_task(autoretry_for=(OSError,), retry_backoff=60, max_retries=4)
def notification_email_send_task(knowledge_base_id: int, event: str, payload: dict) -> None:
    from knowledge.models import KnowledgeBase
    from training.services.notifications import notification_email_send

    knowledge_base = KnowledgeBase.objects.filter(pk=knowledge_base_id).first()
    if knowledge_base is not None:
        notification_email_send(knowledge_base=knowledge_base, event=event, payload=payload)
