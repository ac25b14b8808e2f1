"""A run row's life outside the engine: starting one (validate, snapshot, queue, enqueue),
cancelling it, failing one that waited too long for its lock, and sweeping stalled runs.

A stalled run that follows a remote job (an OpenAI fine-tuning job recorded in
TrainingRun.remote_state) is not failed while the job it paid for goes on: it is queued again,
and its next execution re-attaches to the same job, at most RAGLOOP_OPENAI_REATTACH_LIMIT times."""

import logging
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from knowledge.errors import Conflict, InvalidInput
from knowledge.models import KnowledgeBase
from knowledge.services.audit import audit_record
from training.models import DatasetSnapshot, TrainingRun, WebhookEndpoint
from training.services.notifications import notify
from training.services.runs.parameters import (
    LABEL_FREE_MODES,
    check_corpus_trainable,
    check_trainable,
    validated_parameters,
)
from training.services.runs.shared import log_line, run_checkpoint_discard, run_checkpoint_step
from training.services.snapshots import dataset_snapshot_create

logger = logging.getLogger(__name__)


_UNFINISHED = [TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING]


def stall_seconds() -> int:
    """A running run whose heartbeat is older than this is considered dead (default 10 min)."""
    return int(settings.RAGLOOP_TRAINING_STALL_SECONDS)


def _enqueue_execute(run_id: int) -> None:
    from training.tasks import (
        training_run_execute_task,  # tasks import services, not the reverse
    )

    training_run_execute_task.delay(run_id)


def training_run_start(
    *,
    knowledge_base: KnowledgeBase,
    component: str,
    mode: str,
    parameters: dict | None = None,
    snapshot: DatasetSnapshot | None = None,
    include_synthetic: bool = False,
    created_by=None,
) -> TrainingRun:
    """Queue a training run; its task is sent to the `training` queue after commit.

    Without `snapshot`, the knowledge base's current labels are snapshotted first (in the same
    transaction, so a refused run leaves no snapshot behind), with the labels of synthetic
    turns only if `include_synthetic`. A label-free mode (corpus_pairs) takes no snapshot.
    """
    if snapshot is not None and snapshot.knowledge_base_id != knowledge_base.pk:
        raise InvalidInput(f"Snapshot {snapshot.pk} belongs to another knowledge base than {knowledge_base.slug!r}.")
    effective = validated_parameters(
        knowledge_base=knowledge_base, component=component, mode=mode, parameters=parameters, snapshot=snapshot
    )
    with transaction.atomic():
        # Serialises starts on this knowledge base, so two requests cannot both see "no run".
        KnowledgeBase.objects.select_for_update().get(pk=knowledge_base.pk)
        active = TrainingRun.objects.filter(
            knowledge_base=knowledge_base, component=component, status__in=_UNFINISHED
        ).first()
        if active is not None:
            raise Conflict(
                f"Training run #{active.pk} ({active.mode}) of the {component} of {knowledge_base.slug!r} is "
                f"{active.status}; wait for it to finish or cancel it."
            )
        if mode in LABEL_FREE_MODES:
            check_corpus_trainable(knowledge_base=knowledge_base)
            queued = f"queued {component} training ({mode}) on the chunks of the live space; no labels"
        else:
            if snapshot is None:
                snapshot = dataset_snapshot_create(
                    knowledge_base=knowledge_base, created_by=created_by, heldout_share=effective["heldout_share"],
                    include_synthetic=include_synthetic, reuse_identical=True,
                )  # fmt: skip
            effective["heldout_share"] = snapshot.heldout_share
            check_trainable(snapshot=snapshot, mode=mode)
            queued = (
                f"queued {component} training ({mode}) on snapshot {snapshot.pk} "
                f"({snapshot.train_count} train / {snapshot.heldout_count} held-out examples"
                + (f", {snapshot.synthetic_count} synthetic" if snapshot.synthetic_count else "")
                + ")"
            )
        run = TrainingRun.objects.create(
            knowledge_base=knowledge_base,
            component=component,
            mode=mode,
            snapshot=snapshot,
            parameters=effective,
            created_by=created_by,
            log=log_line(queued),
        )
        audit_record(
            action="training.start", object_type="training_run", object_id=run.pk, knowledge_base=knowledge_base,
            actor=created_by,
            after={"component": component, "mode": mode, "snapshot": snapshot.pk if snapshot else None, "parameters": effective},
        )  # fmt: skip
        transaction.on_commit(lambda: _enqueue_execute(run.pk))
    return run


def training_run_cancel(*, run: TrainingRun) -> TrainingRun:
    """Cancel a queued run at once; ask a running one to stop at its next step."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.is_finished:
            raise Conflict(f"Training run #{run.pk} has already {run.status}.")
        if run.status == TrainingRun.Status.QUEUED and run.remote_state.get("job_id"):
            # Queued again to follow its remote job: the execution that re-attaches cancels that
            # job on the server, and reports a failure to do so instead of a cancellation.
            run.cancel_requested = True
            run.log += log_line(f"cancel requested; the run cancels fine-tuning job {run.remote_state['job_id']} when it resumes")
        elif run.status == TrainingRun.Status.QUEUED:
            run.status = TrainingRun.Status.CANCELLED
            run.finished_at = timezone.now()
            run.log += log_line("cancelled before it started" if not run.resumes else "cancelled while queued to resume")
            if run.resumes:
                transaction.on_commit(lambda: run_checkpoint_discard(run))
        else:
            run.cancel_requested = True
            run.log += log_line("cancel requested; the run stops at its next step")
        run.save(update_fields=["status", "finished_at", "cancel_requested", "log"])
        audit_record(
            action="training.cancel", object_type="training_run", object_id=run.pk, knowledge_base=run.knowledge_base,
            after={"status": run.status, "cancel_requested": run.cancel_requested},
        )  # fmt: skip
    return run


def training_run_fail_waiting(*, run_id: int) -> None:
    """Give up on a queued run whose component lock stayed held for as long as its task retries."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        if run.status != TrainingRun.Status.QUEUED:
            return
        message = "Another run of this component held its lock for too long; start this run again."
        run.status = TrainingRun.Status.FAILED
        run.error = message
        run.finished_at = timezone.now()
        run.log += log_line(message)
        run.save(update_fields=["status", "error", "finished_at", "log"])
        training_run_failed_notify(run)
        if run.resumes:
            transaction.on_commit(lambda: run_checkpoint_discard(run))


def training_run_failed_notify(run: TrainingRun) -> None:
    """Emit run.failed for a run just marked failed (inside the caller's transaction, so the
    webhooks and e-mail go out only if the failure is committed)."""
    notify(knowledge_base=run.knowledge_base, event=WebhookEndpoint.Event.RUN_FAILED, payload={
        "component": run.component,
        "run": run.pk,
        "mode": run.mode,
        "error": run.error,
    })


# How a stalled run's error starts (the loop trains such a run again; other failures it does not).
STALLED_PREFIX = "The worker stopped"


def _stalled_message(run: TrainingRun) -> str:
    last = run.heartbeat_at or run.started_at
    since = f"{last:%Y-%m-%d %H:%M:%S} UTC" if last else "it started"
    return f"{STALLED_PREFIX} (no heartbeat since {since})."


def heartbeat_fresh(run: TrainingRun) -> bool:
    last = run.heartbeat_at or run.started_at
    return last is not None and last >= timezone.now() - timedelta(seconds=stall_seconds())


def fail_stalled(run: TrainingRun) -> None:
    """Mark a locked running row failed because its worker is gone."""
    message = _stalled_message(run)
    run.status = TrainingRun.Status.FAILED
    run.error = message
    run.finished_at = timezone.now()
    run.log += log_line(message)
    run.save(update_fields=["status", "error", "finished_at", "log"])
    training_run_failed_notify(run)
    # A checkpoint it could have gone on from (the resume bound is spent): nobody will now.
    transaction.on_commit(lambda: run_checkpoint_discard(run))


def reattach_limit() -> int:
    return int(settings.RAGLOOP_OPENAI_REATTACH_LIMIT)


def _reattach_count(run: TrainingRun) -> bool:
    """Count one more re-attachment if the run has a remote job and the bound allows; True if so."""
    state = dict(run.remote_state or {})
    if not state.get("job_id") or int(state.get("reattached", 0)) >= reattach_limit():
        return False
    state["reattached"] = int(state.get("reattached", 0)) + 1
    run.remote_state = state
    return True


def remote_job_reattach(run: TrainingRun) -> bool:
    """A locked running row whose worker is gone: keep it running, to follow its remote job in
    this process, if it has one and the bound allows; True if so (the caller then trains)."""
    message = _stalled_message(run)
    if not _reattach_count(run):
        return False
    state = run.remote_state
    run.heartbeat_at = timezone.now()
    run.log += log_line(f"{message} Re-attaching to remote job {state['job_id']} ({state['reattached']} of {reattach_limit()}).")
    run.save(update_fields=["remote_state", "heartbeat_at", "log"])
    return True


def _requeue_to_reattach(run: TrainingRun) -> bool:
    """A stalled row with a remote job: queue it again to follow that job; True if so."""
    message = _stalled_message(run)
    if not _reattach_count(run):
        return False
    state = run.remote_state
    run.status = TrainingRun.Status.QUEUED
    run.log += log_line(
        f"{message} Queued again to follow remote job {state['job_id']} ({state['reattached']} of {reattach_limit()})."
    )
    run.save(update_fields=["status", "remote_state", "log"])
    transaction.on_commit(lambda: _enqueue_execute(run.pk))
    return True


def resume_limit() -> int:
    return int(settings.RAGLOOP_TRAINING_RESUME_LIMIT)


def _resumable_from(run: TrainingRun) -> int | None:
    """The checkpoint step a stalled local run can go on from, if it has one and the bound allows."""
    if run.resumes >= resume_limit():
        return None
    return run_checkpoint_step(run)


def checkpoint_resume(run: TrainingRun) -> bool:
    """A locked running row whose worker is gone: keep it running, to go on from its checkpoint
    in this process, if it has one and the bound allows; True if so (the caller then trains)."""
    step = _resumable_from(run)
    if step is None:
        return False
    run.resumes += 1
    run.heartbeat_at = timezone.now()
    run.log += log_line(
        f"{_stalled_message(run)} Going on from its checkpoint at step {step} ({run.resumes} of {resume_limit()})."
    )
    run.save(update_fields=["resumes", "heartbeat_at", "log"])
    return True


def _requeue_to_resume(run: TrainingRun) -> bool:
    """A stalled row with a checkpoint: queue it again to go on from there; True if so."""
    step = _resumable_from(run)
    if step is None:
        return False
    run.resumes += 1
    run.status = TrainingRun.Status.QUEUED
    run.log += log_line(
        f"{_stalled_message(run)} Queued again to go on from its checkpoint at step {step} "
        f"({run.resumes} of {resume_limit()})."
    )
    run.save(update_fields=["status", "resumes", "log"])
    transaction.on_commit(lambda: _enqueue_execute(run.pk))
    return True


def training_runs_fail_stalled() -> list[int]:
    """Fail running runs whose heartbeat stopped (their worker was killed); returns their ids.

    A run following a remote job is queued again instead (bounded), so it re-attaches to it; a
    local run with a checkpoint is queued again (bounded) to go on from its last checkpoint."""
    cutoff = timezone.now() - timedelta(seconds=stall_seconds())
    candidates = list(
        TrainingRun.objects.filter(status=TrainingRun.Status.RUNNING)
        .filter(Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff))
        .values_list("pk", flat=True)
    )
    failed = []
    for run_id in candidates:
        with transaction.atomic():
            run = TrainingRun.objects.select_for_update().get(pk=run_id)
            # Re-checked under the lock: the worker may have beaten (or finished) meanwhile.
            if run.status != TrainingRun.Status.RUNNING or heartbeat_fresh(run):
                continue
            if _requeue_to_reattach(run):
                logger.warning("Training run %s stalled; queued again to follow its remote job", run_id)
                continue
            if _requeue_to_resume(run):
                logger.warning("Training run %s stalled; queued again to go on from its checkpoint", run_id)
                continue
            fail_stalled(run)
        logger.warning("Training run %s stalled; marked failed", run_id)
        failed.append(run_id)
    return failed
