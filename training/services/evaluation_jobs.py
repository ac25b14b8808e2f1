"""Evaluation as a job row: a candidate's evaluation is queued, run by the `training` queue's
worker, and ends with an Evaluation or an error the UI shows (not a line in a worker's log).

A job runs under a session advisory lock of its own, so a redelivered message never runs it
twice at once; a job left running by a worker that died (its lock is gone with its session) is
found by `evaluation_jobs_resume_stalled` (the loop tick) and queued again.
"""

import logging

from django.db import connection, transaction
from django.utils import timezone

from knowledge.errors import ServiceError
from training.models import DatasetSnapshot, EvaluationJob, ModelVersion

logger = logging.getLogger(__name__)

# Second key of the job's advisory lock (the first is the job id); training runs use 1 and 2
# with the knowledge base id first, so the two never collide on the second key.
_LOCK_CODE = 3


def _enqueue(job_id: int) -> None:
    from training.tasks import evaluation_job_execute_task

    evaluation_job_execute_task.delay(job_id)


def evaluation_job_start(*, version: ModelVersion, snapshot: DatasetSnapshot | None = None) -> EvaluationJob:
    """Queue an evaluation of `version` (on `snapshot`, else the pinned set or its own snapshot)."""
    job = EvaluationJob.objects.create(knowledge_base_id=version.knowledge_base_id, candidate=version, snapshot=snapshot)
    transaction.on_commit(lambda: _enqueue(job.pk))
    return job


def _try_lock(job_id: int) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s::integer, %s::integer)", [job_id, _LOCK_CODE])
        return bool(cursor.fetchone()[0])


def _unlock(job_id: int) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s::integer, %s::integer)", [job_id, _LOCK_CODE])
    except Exception:  # a broken connection: its session, and the lock with it, is gone already
        connection.close()


def evaluation_job_execute(*, job_id: int) -> EvaluationJob | None:
    """Run a queued job (or one whose worker died); a no-op for a finished or busy one."""
    from training.services.evaluation import model_version_evaluate

    if not EvaluationJob.objects.filter(pk=job_id).exists():
        return None
    if not _try_lock(job_id):
        return None  # another process is evaluating it
    try:
        with transaction.atomic():
            job = EvaluationJob.objects.select_for_update().get(pk=job_id)
            if job.is_finished:
                return job
            # Queued, or running with its lock free: the process that ran it is gone.
            job.status = EvaluationJob.Status.RUNNING
            job.started_at = timezone.now()
            job.error = ""
            job.save(update_fields=["status", "started_at", "error"])
        version = ModelVersion.objects.get(pk=job.candidate_id)
        try:
            evaluation = model_version_evaluate(version=version, snapshot=job.snapshot)
        except ServiceError as error:
            return _finish(job, status=EvaluationJob.Status.FAILED, error=str(error))
        except Exception as error:
            logger.exception("Evaluation job %s failed", job_id)
            return _finish(job, status=EvaluationJob.Status.FAILED, error=f"{type(error).__name__}: {error}"[:5000])
        return _finish(job, status=EvaluationJob.Status.SUCCEEDED, evaluation=evaluation)
    finally:
        _unlock(job_id)


def _finish(job: EvaluationJob, *, status: str, error: str = "", evaluation=None) -> EvaluationJob:
    job.status = status
    job.error = error
    job.evaluation = evaluation
    job.finished_at = timezone.now()
    job.save(update_fields=["status", "error", "evaluation", "finished_at"])
    return job


def evaluation_jobs_resume_stalled() -> list[int]:
    """Queue again the running jobs no process holds the lock of (their worker died)."""
    resumed = []
    for job_id in EvaluationJob.objects.filter(status=EvaluationJob.Status.RUNNING).values_list("pk", flat=True):
        if _try_lock(job_id):
            _unlock(job_id)
            _enqueue(job_id)
            resumed.append(job_id)
    return resumed
