"""The execution engine: `training_run_execute` takes a queued run under its component's
advisory lock, calls the mode's trainer (TRAINERS) and registers what it made as a candidate version."""

import errno
import functools
import logging
import os
import socket
import subprocess
import traceback
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from knowledge.artifact_store import artifact_discard, artifact_publish, artifact_store_url, artifacts_root
from knowledge.errors import InvalidInput
from knowledge.models import EmbeddingSpace
from rag.training.artifacts import write_manifest
from training.models import Component, ModelVersion, TrainingRun
from training.services.evaluation_jobs import evaluation_job_start
from training.services.runs.lifecycle import (
    checkpoint_resume,
    fail_stalled,
    heartbeat_fresh,
    remote_job_reattach,
    training_run_failed_notify,
)
from training.services.runs.parameters import LABEL_FREE_MODES
from training.services.runs.shared import Reporter, Trained, log_line, run_output_folder
from training.services.runs.trainers.generator import (
    train_lora_radit,
    train_lora_raft,
    train_openai,
)
from training.services.runs.trainers.reranker import train_cross_encoder
from training.services.runs.trainers.retriever import train_contrastive, train_corpus_pairs, train_lsr
from training.services.versions import (
    model_version_next_name,
    model_version_register,
)

logger = logging.getLogger(__name__)


# Second key of the advisory lock; the first is the knowledge base id.
_LOCK_CODES = {Component.RETRIEVER: 1, Component.GENERATOR: 2, Component.RERANKER: 3}
WAITING_FOR_LOCK = "waiting: another run of this component holds its lock; retrying shortly"


TRAINERS: dict[str, Callable[..., Trained]] = {
    "contrastive": train_contrastive,
    "contrastive_query_only": train_contrastive,
    "lsr": train_lsr,
    "corpus_pairs": train_corpus_pairs,
    "lora_radit": train_lora_radit,
    "lora_raft": train_lora_raft,
    "openai": train_openai,
    "cross_encoder": train_cross_encoder,
}


class Outcome(StrEnum):
    """What one execution of a run's task did."""

    NOTHING_TO_DO = "nothing_to_do"  # finished already, or running in another process
    WAITING_FOR_LOCK = "waiting_for_lock"  # left queued: the component's lock is held
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class _ComponentLock:
    """Postgres session advisory lock on (knowledge base, component), held for a whole run.

    Session-level rather than transaction-level: the training runs outside any transaction.
    If the worker dies, its database session ends and Postgres releases the lock.
    """

    def __init__(self, knowledge_base_id: int, component: str) -> None:
        self.keys = [int(knowledge_base_id), _LOCK_CODES[component]]

    def acquire(self) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s::integer, %s::integer)", self.keys)
            return bool(cursor.fetchone()[0])

    def release(self) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s::integer, %s::integer)", self.keys)
        except Exception:  # a broken connection: its session, and so the lock, is gone already
            logger.warning("Could not release training lock %s; closing the connection", self.keys, exc_info=True)
            connection.close()


def training_run_execute(*, run_id: int) -> Outcome:
    """Train a queued run and register its candidate version; a no-op for any other run."""
    run = TrainingRun.objects.filter(pk=run_id).only("pk", "knowledge_base_id", "component").first()
    if run is None:
        logger.warning("Training run %s no longer exists", run_id)
        return Outcome.NOTHING_TO_DO
    lock = _ComponentLock(run.knowledge_base_id, run.component)
    locked = lock.acquire()
    try:
        with transaction.atomic():
            run = TrainingRun.objects.select_for_update().get(pk=run_id)
            if run.is_finished:
                return Outcome.NOTHING_TO_DO  # a redelivered message: the work is done
            if run.status == TrainingRun.Status.RUNNING:
                if not locked or heartbeat_fresh(run):
                    # Running elsewhere (a redelivered message): never start a second copy.
                    return Outcome.NOTHING_TO_DO
                # We hold the component's lock, so the process that ran this run is gone (its
                # session, and the lock with it, ended). A run following a remote job it already
                # started re-attaches to that job, one with a checkpoint goes on from it; any
                # other is failed as the sweeper would.
                if not remote_job_reattach(run) and not checkpoint_resume(run):
                    fail_stalled(run)
                    return Outcome.FAILED
            else:
                if not locked:
                    if not run.log.rstrip().endswith(WAITING_FOR_LOCK):
                        run.log += log_line(WAITING_FOR_LOCK)
                        run.save(update_fields=["log"])
                    return Outcome.WAITING_FOR_LOCK
                now = timezone.now()
                run.status = TrainingRun.Status.RUNNING
                run.started_at = run.started_at or now  # kept when queued again to re-attach
                run.heartbeat_at = now
                run.progress = 0.0
                run.log += log_line(f"started on {socket.gethostname()} (pid {os.getpid()})")
                run.save(update_fields=["status", "started_at", "heartbeat_at", "progress", "log"])
        return _train_and_register(run_id)
    finally:
        if locked:
            lock.release()


def _train_and_register(run_id: int) -> Outcome:
    from rag.training import TrainingCancelled

    run = TrainingRun.objects.select_related("knowledge_base", "snapshot").get(pk=run_id)
    reporter = Reporter(run_id)
    folder = run_output_folder(run)
    owns_folder = False  # a failed or cancelled run removes only what it wrote itself
    try:
        if run.snapshot is None and run.mode not in LABEL_FREE_MODES:
            raise InvalidInput("The run's dataset snapshot was deleted.")
        # The folder is this run's own earlier execution's: a remote job's, or a checkpoint's.
        resuming = bool(run.remote_state.get("job_id")) or run.resumes > 0
        if folder.exists() and any(folder.iterdir()) and not resuming:
            # Run ids are unique, so this is left over from another database; never overwrite it.
            raise InvalidInput(f"The output folder {folder} already exists and is not empty.")
        owns_folder = True
        trained = TRAINERS[run.mode](run=run, folder=folder, reporter=reporter)
        if artifact_store_url():
            # Outside the registration's transaction, which holds the run's row: an upload may
            # take minutes. Registering finds it published and uploads nothing again.
            reporter.phase(f"uploading the artifact to {artifact_store_url()}", low=0.96, high=0.96)
            write_manifest(trained.folder)
            artifact_publish(folder=trained.folder)
        reporter.phase("registering the model version", low=0.97, high=0.97)
        return _register(run_id=run_id, trained=trained, reporter=reporter)
    except TrainingCancelled as cancelled:
        if owns_folder:
            _clean_folder(folder)
        return _finish(run_id, TrainingRun.Status.CANCELLED, log=f"stopped: {cancelled}")
    except Exception as error:
        logger.exception("Training run %s failed", run_id)
        if owns_folder:
            _clean_folder(folder)
        return _finish(
            run_id,
            TrainingRun.Status.FAILED,
            error=_error_message(error),
            log="failed:\n" + traceback.format_exc(),
        )


def _outcome_for(status: str) -> Outcome:
    return Outcome(status) if status in Outcome._value2member_map_ else Outcome.NOTHING_TO_DO


def _error_message(error: Exception) -> str:
    from knowledge.errors import ServiceError

    if isinstance(error, ServiceError):
        return str(error)
    if _out_of_disk_space(error):
        return (
            f"The disk ran out of space while the run wrote its model under {artifacts_root()}: the partial "
            "artifact was deleted and nothing was registered. Free space there (or point RAGLOOP_ARTIFACTS_DIR "
            f"at a larger disk) and start the run again. ({type(error).__name__}: {error})"
        )[:5000]
    return f"{type(error).__name__}: {error}"[:5000]


def _out_of_disk_space(error: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain; safetensors' writer reports it as text, not as an OSError."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error) or "StorageFull" in str(error):
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _clean_folder(folder: Path) -> None:
    # Only the run's own folder (and its upload): no version refers to it when the run did not succeed.
    artifact_discard(folder=folder)


def _finish(run_id: int, status: str, *, error: str = "", log: str = "") -> Outcome:
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        if run.status != TrainingRun.Status.RUNNING:
            # The sweeper failed it while this process was still going; its verdict stands.
            return _outcome_for(run.status)
        run.status = status
        run.error = error
        run.finished_at = timezone.now()
        run.heartbeat_at = run.finished_at
        run.log += log_line(log or status)
        run.save(update_fields=["status", "error", "finished_at", "heartbeat_at", "log"])
        if status == TrainingRun.Status.FAILED:
            training_run_failed_notify(run)
    return Outcome(status)


@functools.lru_cache(maxsize=1)
def code_revision() -> str:
    """The code's git commit (RAGLOOP_CODE_REVISION in images without .git), else ""."""
    if os.environ.get("RAGLOOP_CODE_REVISION"):
        return os.environ["RAGLOOP_CODE_REVISION"][:64]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return result.stdout.strip()[:64]


def _evaluation_start(version_id: int) -> None:
    # A job row per evaluation (training.services.evaluation_jobs): status and error are shown.
    evaluation_job_start(version=ModelVersion.objects.get(pk=version_id))


def _register(*, run_id: int, trained: Trained, reporter: Reporter) -> Outcome:
    from knowledge.services.embeddings import embedding_job_start

    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().select_related("knowledge_base").get(pk=run_id)
        if run.status != TrainingRun.Status.RUNNING:
            # Failed by the sweeper while this process was still training: nothing is registered.
            _clean_folder(trained.folder)
            return _outcome_for(run.status)
        knowledge_base = run.knowledge_base
        parent = ModelVersion.objects.filter(
            knowledge_base=knowledge_base, component=run.component, status=ModelVersion.Status.LIVE
        ).first()
        name = model_version_next_name(knowledge_base=knowledge_base, component=run.component)
        fields = dict(trained.fields)
        space = None
        if trained.new_space_model_reference:
            # Full mode: documents need the new encoder's vectors, in a space of the version's own.
            # Same architecture as the live encoder it was trained from, so the same dimensions.
            dimensions = fields.pop("dimensions")
            space = EmbeddingSpace.objects.create(
                knowledge_base=knowledge_base,
                retriever_version=name,
                model_reference=trained.new_space_model_reference,
                dimensions=dimensions,
                status=EmbeddingSpace.Status.BUILDING,
                # The new version's vectors come from the backend the knowledge base serves with
                # (its model is exported the same way on first use: rag.embedding_backends).
                inference_backend=knowledge_base.live_space.inference_backend if knowledge_base.live_space_id else "torch",
            )
            fields["embedding_space"] = space
        version = model_version_register(
            knowledge_base=knowledge_base,
            component=run.component,
            artifact_folder=trained.folder,
            name=name,
            parent=parent,
            snapshot_id=run.snapshot_id,
            training_run=run,
            mode=run.mode,
            parameters={**run.parameters, "trainer": trained.trainer_parameters},
            code_revision=code_revision(),
            training_curve=trained.training_curve or reporter.curve,
            **fields,
        )
        evaluate_now = True
        if space is not None:
            job = embedding_job_start(space=space)
            if job is None:  # no chunks at all: an empty space is complete
                EmbeddingSpace.objects.filter(pk=space.pk).update(status=EmbeddingSpace.Status.READY)
            else:
                # training.receivers enqueues the evaluation when the space turns ready.
                evaluate_now = False
        run.status = TrainingRun.Status.SUCCEEDED
        run.progress = 1.0
        run.finished_at = timezone.now()
        run.heartbeat_at = run.finished_at
        note = f"registered candidate {version.name} ({version.artifact_path or 'no artifact'})"
        if not evaluate_now:
            note += f"; embedding the corpus into space {space.retriever_version} before it can be evaluated"
        run.log += log_line(note)
        run.save(update_fields=["status", "progress", "finished_at", "heartbeat_at", "log"])
        if evaluate_now:
            _evaluation_start(version.pk)
    return Outcome.SUCCEEDED


def retriever_candidates_evaluate_when_ready(*, space: EmbeddingSpace) -> list[int]:
    """Queue the evaluation of the full-mode candidate whose own space just became ready."""
    version_ids = list(
        ModelVersion.objects.filter(
            embedding_space=space,
            name=space.retriever_version,
            component=Component.RETRIEVER,
            status=ModelVersion.Status.CANDIDATE,
        ).values_list("pk", flat=True)
    )
    for version_id in version_ids:
        _evaluation_start(version_id)
    return version_ids
