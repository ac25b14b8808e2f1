"""Celery tasks of the training app: each takes ids and calls one service (see training.services.runs).

Training and evaluation go to the `training` queue (concurrency 1, possibly on a GPU machine);
nothing here or in the services touches CUDA before a task runs.
"""

import logging

from celery import shared_task
from django.conf import settings

from knowledge.errors import ServiceError
from training.services import runs

logger = logging.getLogger(__name__)

# How long a run whose component lock is held waits before its task tries again, and how many
# times: the holder is a live run (it ends) or one the sweeper failed (it stops at its next step).
LOCK_RETRY_SECONDS = 30
LOCK_RETRIES = 240  # two hours


@shared_task(bind=True, max_retries=LOCK_RETRIES)
def training_run_execute_task(self, run_id: int) -> str:
    outcome = runs.training_run_execute(run_id=run_id)
    if outcome == runs.Outcome.WAITING_FOR_LOCK:
        if self.request.retries >= self.max_retries:
            runs.training_run_fail_waiting(run_id=run_id)
            return outcome
        countdown = getattr(settings, "RAGLOOP_TRAINING_LOCK_RETRY_SECONDS", LOCK_RETRY_SECONDS)
        raise self.retry(countdown=countdown)
    return outcome


@shared_task
def model_version_evaluate_task(version_id: int) -> None:
    # Imported when the task runs: the evaluation service is its own module, loaded with its models.
    from training.models import ModelVersion
    from training.services import evaluation

    version = ModelVersion.objects.select_related("snapshot").filter(pk=version_id).first()
    if version is None:
        return
    try:
        # No snapshot named: the service takes the pinned evaluation set, else the version's own
        # snapshot, and leaves out held-out queries the version's lineage trained on.
        evaluation.model_version_evaluate(version=version)
    except ServiceError as error:  # e.g. a snapshot with nothing held out: a reason, not a crash
        logger.warning("Model version %s (%s) was not evaluated: %s", version.name, version.pk, error)


@shared_task
def training_runs_fail_stalled_task() -> None:
    runs.training_runs_fail_stalled()


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
