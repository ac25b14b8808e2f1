"""Training runs: one row per training of a knowledge base's retriever or generator.

`training_run_start` validates the request, freezes a dataset snapshot and queues the row;
`training_run_execute` (the `training` queue's Celery task) is the engine that moves it:
it builds the training inputs from the snapshot's train split, calls a trainer in rag.training,
and registers the result as a candidate model version with its lineage. The UI and the CLI
only read the row: status, progress, heartbeat, log and error.

One run per knowledge base and component at a time, guarded twice: `training_run_start`
refuses a second queued or running run (Conflict), and `training_run_execute` holds a Postgres
session advisory lock on (knowledge base, component) for the whole training. A run whose
lock is held by another process stays queued and its task retries later (see
training.tasks): the holder is either a live run, which ends, or a run the sweeper failed
while its process was still going, which sees that at its next step and stops.

A redelivered task message finds its run finished or running and does nothing; a run's row
never goes back from running to queued, so a run is trained at most once. A killed worker
leaves its run running with a stale heartbeat; `training_runs_fail_stalled` (beat, every
minute) marks it failed, and then a new run can start.

Outputs go to artifacts_root()/<kb slug>/<component>/<run id>/, written once, then
checksummed by model_version_register. Nothing here touches CUDA at import time: models
load inside the trainers, which run only inside the task.
"""

import functools
import json
import logging
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q, TextField, Value
from django.db.models.functions import Concat
from django.utils import timezone

from knowledge.errors import Conflict, InvalidInput
from knowledge.models import Chunk, EmbeddingSpace, KnowledgeBase
from training.models import Component, DatasetSnapshot, ModelVersion, SnapshotExample, TrainingRun
from training.services.snapshots import dataset_snapshot_create, snapshot_dataset_examples
from training.services.versions import artifacts_root, model_version_next_name, model_version_register

logger = logging.getLogger(__name__)

RETRIEVER_MODES = ("contrastive", "contrastive_query_only", "lsr")
GENERATOR_MODES = ("lora_radit", "lora_raft", "openai")
MODES = {Component.RETRIEVER: RETRIEVER_MODES, Component.GENERATOR: GENERATOR_MODES}

_UNFINISHED = [TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING]
# Second key of the advisory lock; the first is the knowledge base id.
_LOCK_CODES = {Component.RETRIEVER: 1, Component.GENERATOR: 2}
# Progress, heartbeat and log are written, and cancellation read, at most this often.
REPORT_INTERVAL_SECONDS = 1.0
WAITING_FOR_LOCK = "waiting: another run of this component holds its lock; retrying shortly"


def stall_seconds() -> int:
    """A running run whose heartbeat is older than this is considered dead (default 10 min)."""
    return int(settings.RAGLOOP_TRAINING_STALL_SECONDS)


# --- parameters --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parameter:
    kind: type
    low: float | None = None
    high: float | None = None
    low_exclusive: bool = False
    high_exclusive: bool = False

    def describe(self) -> str:
        kind = {int: "an integer", float: "a number", bool: "true or false", str: "a non-empty string"}[self.kind]
        if self.low is None and self.high is None:
            return kind
        low = f"{'>' if self.low_exclusive else '>='} {self.low:g}" if self.low is not None else ""
        high = f"{'<' if self.high_exclusive else '<='} {self.high:g}" if self.high is not None else ""
        return f"{kind} {' and '.join(part for part in (low, high) if part)}"

    def accepts(self, value: Any) -> bool:
        if self.kind is bool:
            return isinstance(value, bool)
        if self.kind is str:
            return isinstance(value, str) and bool(value.strip()) and "\x00" not in value and len(value) <= 500
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.low_exclusive and value == self.low)):
            return False
        if self.high is not None and (value > self.high or (self.high_exclusive and value == self.high)):
            return False
        return True


PARAMETERS: dict[str, _Parameter] = {
    "epochs": _Parameter(int, 1, 1000),
    "batch_size": _Parameter(int, 1, 4096),
    "learning_rate": _Parameter(float, 0, 1, low_exclusive=True),
    "warmup_ratio": _Parameter(float, 0, 1),
    "seed": _Parameter(int, 0, 2**31 - 1),
    "heldout_share": _Parameter(float, 0, 1),
    "device": _Parameter(str),  # "cpu", "cuda", "cuda:1"; default: the GPU when there is one
    "top_k": _Parameter(int, 1, 100),
    "mined_negatives": _Parameter(int, 0, 100),
    "mini_batch_size": _Parameter(int, 1, 4096),  # contrastive: GradCache, for batches bigger than memory
    "query_only": _Parameter(bool),
    "lm_temperature": _Parameter(float, 0, 100, low_exclusive=True),
    "retriever_temperature": _Parameter(float, 0, 100, low_exclusive=True),
    "base_model": _Parameter(str),
    "lora_r": _Parameter(int, 1, 1024),
    "lora_alpha": _Parameter(int, 1, 4096),
    "lora_dropout": _Parameter(float, 0, 1, high_exclusive=True),
    "max_length": _Parameter(int, 16, 131072),
    "distractors": _Parameter(int, 0, 50),
    "oracle_probability": _Parameter(float, 0, 1),
    "model": _Parameter(str),
    "base_url": _Parameter(str),
    "suffix": _Parameter(str),
    "learning_rate_multiplier": _Parameter(float, 0, 100, low_exclusive=True),
    "poll_seconds": _Parameter(float, 0, 3600),
    "timeout_seconds": _Parameter(float, 0, 7 * 24 * 3600, low_exclusive=True),
    "max_passages": _Parameter(int, 1, 50),
}

_COMMON = {"seed": 0, "heldout_share": 0.2}
_RETRIEVER = {**_COMMON, "epochs": 1, "batch_size": 16, "learning_rate": 2e-5, "warmup_ratio": 0.1}
_LORA = {
    **_COMMON, "epochs": 1, "batch_size": 4, "learning_rate": 1e-4, "warmup_ratio": 0.0,
    "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "max_length": 512,
}  # fmt: skip
# Each mode's parameters with their defaults; None: optional, no default ("device", "base_url").
# Contrastive runs learn from a few hundred curated queries, not the millions of pairs that
# one epoch at 2e-5 suits. Query-only on SciFact's 647 train queries (dev nDCG@10, base 0.813):
# 1 epoch at 2e-5 0.815, 3 epochs at 2e-5 0.824, 3 epochs at 5e-5 0.853 (docs/benchmarks.md).
_CONTRASTIVE = {
    **_RETRIEVER, "epochs": 3, "learning_rate": 5e-5, "top_k": 10, "mined_negatives": 4, "mini_batch_size": None,
    "device": None,
}  # fmt: skip
MODE_PARAMETERS: dict[str, dict[str, Any]] = {
    "contrastive": _CONTRASTIVE,
    "contrastive_query_only": _CONTRASTIVE,
    "lsr": {
        **_RETRIEVER, "batch_size": 8, "top_k": 5, "lm_temperature": 0.01, "retriever_temperature": 1.0,
        "query_only": True, "base_model": None, "device": None,
    },  # fmt: skip
    "lora_radit": {**_LORA, "top_k": 5, "base_model": None, "device": None},
    "lora_raft": {**_LORA, "distractors": 4, "oracle_probability": 0.8, "base_model": None, "device": None},
    "openai": {
        **_COMMON, "model": None, "base_url": None, "suffix": None, "epochs": None, "batch_size": None,
        "learning_rate_multiplier": None, "poll_seconds": 30.0, "timeout_seconds": None, "max_passages": 5,
    },  # fmt: skip
}


def _validated_parameters(
    *, knowledge_base: KnowledgeBase, component: str, mode: str, parameters: dict | None, snapshot
) -> dict[str, Any]:
    """The run's effective parameters (defaults filled in); InvalidInput names the first problem."""
    if component not in Component.values:
        raise InvalidInput(f"Component {component!r} is unknown; choose one of {', '.join(Component.values)}.")
    if mode not in MODES[component]:
        raise InvalidInput(f"Mode {mode!r} is not a {component} training mode; choose one of {', '.join(MODES[component])}.")
    parameters = {} if parameters is None else parameters
    if not isinstance(parameters, dict):
        raise InvalidInput("Parameters must be a mapping of names to values.")
    if "api_key" in parameters:
        raise InvalidInput(
            "api_key is not a run parameter: run parameters are stored and shown with the run. "
            "Set OPENAI_API_KEY in the training worker's environment instead."
        )
    allowed = MODE_PARAMETERS[mode]
    unknown = sorted(str(name) for name in parameters if name not in allowed)
    if unknown:
        raise InvalidInput(
            f"Unknown parameter(s) for mode {mode!r}: {', '.join(unknown)}. Known: {', '.join(sorted(allowed))}."
        )
    for name, value in parameters.items():
        spec = PARAMETERS[name]
        if not spec.accepts(value):
            raise InvalidInput(f"Parameter {name!r} must be {spec.describe()}, got {value!r}.")
    if mode == "openai" and "base_url" in parameters and not parameters["base_url"].startswith(("http://", "https://")):
        raise InvalidInput(f"Parameter 'base_url' must start with http:// or https://, got {parameters['base_url']!r}.")
    if snapshot is not None and "heldout_share" in parameters and parameters["heldout_share"] != snapshot.heldout_share:
        raise InvalidInput(
            f"heldout_share applies only to a snapshot the run takes itself; snapshot {snapshot.pk} "
            f"holds out {snapshot.heldout_share:g}."
        )
    effective = {name: value for name, value in {**allowed, **parameters}.items() if value is not None}
    if mode == "lsr" and "query_only" not in parameters:
        effective["query_only"] = True
    if "base_model" in allowed and "base_model" not in effective:
        if knowledge_base.generator_backend == KnowledgeBase.GeneratorBackend.HF and knowledge_base.generator_model:
            effective["base_model"] = knowledge_base.generator_model
        else:
            need = "scores chunks with" if mode == "lsr" else "trains an adapter for"
            raise InvalidInput(
                f"Mode {mode!r} {need} a local Hugging Face causal LM: pass base_model (its folder); the "
                f"knowledge base's generator is {knowledge_base.generator_backend!r}, not 'hf'."
            )
    if mode == "openai" and "model" not in effective:
        if knowledge_base.generator_backend == KnowledgeBase.GeneratorBackend.OPENAI and knowledge_base.generator_model:
            effective["model"] = knowledge_base.generator_model
        elif os.environ.get("OPENAI_MODEL"):
            effective["model"] = os.environ["OPENAI_MODEL"]
        else:
            raise InvalidInput("Mode 'openai' needs model: the name of the model to fine-tune (or OPENAI_MODEL set).")
    return effective


def _check_trainable(*, snapshot: DatasetSnapshot, mode: str) -> None:
    """Refuse a snapshot whose train split holds nothing this mode can learn from."""
    train = list(snapshot.examples.filter(split=SnapshotExample.Split.TRAIN).values("relevant", "gold_answer", "retrieved"))
    if not train:
        raise InvalidInput(
            f"Snapshot {snapshot.pk} has no training examples: all {snapshot.example_count} are held out."
        )
    with_answer = [row for row in train if row["gold_answer"].strip()]
    if mode in ("contrastive", "contrastive_query_only"):
        if not any(row["relevant"] for row in train):
            raise InvalidInput(f"Snapshot {snapshot.pk} has no training example with a passage judged relevant.")
    elif mode == "lora_raft":
        if not any(row["relevant"] for row in with_answer):
            raise InvalidInput(
                f"Snapshot {snapshot.pk} has no training example with both a gold answer and a relevant passage."
            )
    elif mode == "openai":
        if not any(row["relevant"] or row["retrieved"] for row in with_answer):
            raise InvalidInput(f"Snapshot {snapshot.pk} has no training example with a gold answer and context.")
    elif not with_answer:  # lsr, lora_radit
        raise InvalidInput(f"Snapshot {snapshot.pk} has no training example with a gold answer.")


# --- start, cancel, sweep ----------------------------------------------------------------


def _log_line(message: str) -> str:
    return f"{timezone.now():%Y-%m-%d %H:%M:%S} {message}\n"


def _append_log(text: str):
    return Concat(F("log"), Value(text), output_field=TextField())


def _enqueue_execute(run_id: int) -> None:
    from training.tasks import training_run_execute_task  # tasks import services, not the reverse

    training_run_execute_task.delay(run_id)


def training_run_start(
    *,
    knowledge_base: KnowledgeBase,
    component: str,
    mode: str,
    parameters: dict | None = None,
    snapshot: DatasetSnapshot | None = None,
    created_by=None,
) -> TrainingRun:
    """Queue a training run; its task is sent to the `training` queue after commit.

    Without `snapshot`, the knowledge base's current labels are snapshotted first (in the same
    transaction, so a refused run leaves no snapshot behind).
    """
    if snapshot is not None and snapshot.knowledge_base_id != knowledge_base.pk:
        raise InvalidInput(f"Snapshot {snapshot.pk} belongs to another knowledge base than {knowledge_base.slug!r}.")
    effective = _validated_parameters(
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
        if snapshot is None:
            snapshot = dataset_snapshot_create(
                knowledge_base=knowledge_base, created_by=created_by, heldout_share=effective["heldout_share"]
            )
        effective["heldout_share"] = snapshot.heldout_share
        _check_trainable(snapshot=snapshot, mode=mode)
        run = TrainingRun.objects.create(
            knowledge_base=knowledge_base,
            component=component,
            mode=mode,
            snapshot=snapshot,
            parameters=effective,
            created_by=created_by,
            log=_log_line(
                f"queued {component} training ({mode}) on snapshot {snapshot.pk} "
                f"({snapshot.train_count} train / {snapshot.heldout_count} held-out examples)"
            ),
        )
        transaction.on_commit(lambda: _enqueue_execute(run.pk))
    return run


def training_run_cancel(*, run: TrainingRun) -> TrainingRun:
    """Cancel a queued run at once; ask a running one to stop at its next step."""
    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if run.is_finished:
            raise Conflict(f"Training run #{run.pk} has already {run.status}.")
        if run.status == TrainingRun.Status.QUEUED:
            run.status = TrainingRun.Status.CANCELLED
            run.finished_at = timezone.now()
            run.log += _log_line("cancelled before it started")
        else:
            run.cancel_requested = True
            run.log += _log_line("cancel requested; the run stops at its next step")
        run.save(update_fields=["status", "finished_at", "cancel_requested", "log"])
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
        run.log += _log_line(message)
        run.save(update_fields=["status", "error", "finished_at", "log"])


def _stalled_message(run: TrainingRun) -> str:
    last = run.heartbeat_at or run.started_at
    since = f"{last:%Y-%m-%d %H:%M:%S} UTC" if last else "it started"
    return f"The worker stopped (no heartbeat since {since})."


def _heartbeat_fresh(run: TrainingRun) -> bool:
    last = run.heartbeat_at or run.started_at
    return last is not None and last >= timezone.now() - timedelta(seconds=stall_seconds())


def _fail_stalled(run: TrainingRun) -> None:
    """Mark a locked running row failed because its worker is gone."""
    message = _stalled_message(run)
    run.status = TrainingRun.Status.FAILED
    run.error = message
    run.finished_at = timezone.now()
    run.log += _log_line(message)
    run.save(update_fields=["status", "error", "finished_at", "log"])


def training_runs_fail_stalled() -> list[int]:
    """Fail running runs whose heartbeat stopped (their worker was killed); returns their ids."""
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
            if run.status != TrainingRun.Status.RUNNING or _heartbeat_fresh(run):
                continue
            _fail_stalled(run)
        logger.warning("Training run %s stalled; marked failed", run_id)
        failed.append(run_id)
    return failed


# --- the engine --------------------------------------------------------------------------


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


class _Reporter:
    """A run's progress callback and stop check, throttled to one database round trip a second.

    Progress maps a phase's own 0..1 onto [low, high] of the run; each write also beats the
    heartbeat and appends the latest step's metrics to the log. The stop check answers True
    once the run was cancelled, or is no longer running (the sweeper failed it).
    """

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.low, self.high = 0.0, 1.0
        self.fraction = 0.0
        self.latest: dict[str, Any] | None = None
        self.curve: list[dict[str, float]] = []
        self._last_write = -math.inf
        self._last_check = -math.inf
        self._stop = False

    def phase(self, message: str, *, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.fraction = low
        self.write(note=message)

    def progress(self, fraction: float, metrics: dict[str, Any]) -> None:
        self.fraction = self.low + (self.high - self.low) * min(max(float(fraction), 0.0), 1.0)
        self.latest = metrics
        step, loss = metrics.get("step"), metrics.get("loss")
        if isinstance(step, int) and isinstance(loss, int | float) and not isinstance(loss, bool):
            point = {"step": step, "loss": float(loss)}
            if "epoch" in metrics:
                point["epoch"] = metrics["epoch"]
            if not self.curve or self.curve[-1]["step"] != step:
                self.curve.append(point)
        if time.monotonic() - self._last_write >= REPORT_INTERVAL_SECONDS:
            self.write()

    def tick(self, done: int, total: int) -> None:
        """Progress of a preparation loop (mining, scoring): a heartbeat, no log line."""
        self.fraction = self.low + (self.high - self.low) * (done / total if total else 1.0)
        if time.monotonic() - self._last_write >= REPORT_INTERVAL_SECONDS:
            self.write(quiet=True)

    def write(self, *, note: str | None = None, quiet: bool = False) -> None:
        lines = ""
        if self.latest and not quiet:
            lines += _log_line(_metrics_text(self.latest))
            self.latest = None
        if note:
            lines += _log_line(note)
        self._last_write = time.monotonic()
        update: dict[str, Any] = {"progress": self.fraction, "heartbeat_at": timezone.now()}
        if lines:
            update["log"] = _append_log(lines)
        TrainingRun.objects.filter(pk=self.run_id, status=TrainingRun.Status.RUNNING).update(**update)

    def should_stop(self) -> bool:
        if not self._stop and time.monotonic() - self._last_check >= REPORT_INTERVAL_SECONDS:
            self._last_check = time.monotonic()
            row = TrainingRun.objects.filter(pk=self.run_id).values_list("cancel_requested", "status").first()
            self._stop = row is None or row[0] or row[1] != TrainingRun.Status.RUNNING
        return self._stop

    def raise_if_stopped(self) -> None:
        from rag.training import TrainingCancelled

        if self.should_stop():
            raise TrainingCancelled()


def _metrics_text(metrics: dict[str, Any]) -> str:
    parts = []
    for name, value in metrics.items():
        if value is None:
            continue
        if isinstance(value, float):
            parts.append(f"{name} {value:.4g}")
        else:
            parts.append(f"{name} {value}")
    return ", ".join(parts)


@dataclass
class _Trained:
    """What a trainer produced, as ModelVersion fields plus how to finish registering it."""

    folder: Path
    fields: dict[str, Any]
    trainer_parameters: dict[str, Any] = field(default_factory=dict)
    training_curve: list[dict[str, float]] = field(default_factory=list)
    new_space_model_reference: str = ""  # full-mode retriever: its own space, to be embedded


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
                if locked and not _heartbeat_fresh(run):
                    # We hold the component's lock, so the process that ran this run is gone
                    # (its session, and the lock with it, ended): fail it as the sweeper would.
                    _fail_stalled(run)
                    return Outcome.FAILED
                # Running elsewhere (a redelivered message): never start a second copy.
                return Outcome.NOTHING_TO_DO
            if not locked:
                if not run.log.rstrip().endswith(WAITING_FOR_LOCK):
                    run.log += _log_line(WAITING_FOR_LOCK)
                    run.save(update_fields=["log"])
                return Outcome.WAITING_FOR_LOCK
            now = timezone.now()
            run.status = TrainingRun.Status.RUNNING
            run.started_at = now
            run.heartbeat_at = now
            run.progress = 0.0
            run.log += _log_line(f"started on {socket.gethostname()} (pid {os.getpid()})")
            run.save(update_fields=["status", "started_at", "heartbeat_at", "progress", "log"])
        return _train_and_register(run_id)
    finally:
        if locked:
            lock.release()


def run_output_folder(run: TrainingRun) -> Path:
    return artifacts_root() / run.knowledge_base.slug / run.component / str(run.pk)


def _train_and_register(run_id: int) -> Outcome:
    from rag.training import TrainingCancelled

    run = TrainingRun.objects.select_related("knowledge_base", "snapshot").get(pk=run_id)
    reporter = _Reporter(run_id)
    folder = run_output_folder(run)
    owns_folder = False  # a failed or cancelled run removes only what it wrote itself
    try:
        if run.snapshot is None:
            raise InvalidInput("The run's dataset snapshot was deleted.")
        if folder.exists() and any(folder.iterdir()):
            # Run ids are unique, so this is left over from another database; never overwrite it.
            raise InvalidInput(f"The output folder {folder} already exists and is not empty.")
        owns_folder = True
        trained = TRAINERS[run.mode](run=run, folder=folder, reporter=reporter)
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
    return f"{type(error).__name__}: {error}"[:5000]


def _clean_folder(folder: Path) -> None:
    # Only the run's own folder: no version refers to it when the run did not succeed.
    if folder.is_dir() and folder.resolve().is_relative_to(artifacts_root().resolve()):
        shutil.rmtree(folder, ignore_errors=True)


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
        run.log += _log_line(log or status)
        run.save(update_fields=["status", "error", "finished_at", "heartbeat_at", "log"])
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


def _relative(path: Path) -> str:
    """A path under the artifacts folder as curation resolves model references: relative to it."""
    return str(Path(path).resolve().relative_to(artifacts_root().resolve()))


def _enqueue_evaluation(version_id: int) -> None:
    from training.tasks import model_version_evaluate_task

    model_version_evaluate_task.delay(version_id)


def _register(*, run_id: int, trained: _Trained, reporter: _Reporter) -> Outcome:
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
        run.log += _log_line(note)
        run.save(update_fields=["status", "progress", "finished_at", "heartbeat_at", "log"])
        if evaluate_now:
            transaction.on_commit(lambda: _enqueue_evaluation(version.pk))
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
        transaction.on_commit(functools.partial(_enqueue_evaluation, version_id))
    return version_ids


# --- training inputs and trainers --------------------------------------------------------


def _text_key(text: str) -> str:
    return " ".join(text.split())


def _train_examples(run: TrainingRun):
    return snapshot_dataset_examples(snapshot=run.snapshot, split=SnapshotExample.Split.TRAIN)


def _live_retriever(run: TrainingRun):
    """The live retriever (what serving uses now) and the folder of its space's document encoder.

    Retrievers are trained from the live space's encoder: in query-only mode that encoder's
    document side produced the stored vectors the new query encoder must match.
    """
    from knowledge.selectors import retriever_for
    from knowledge.services.knowledge_bases import retriever_model_path

    live = retriever_for(knowledge_base=run.knowledge_base)
    return live, retriever_model_path(live.space.model_reference)


def _retrieve(live, query: str, k: int):
    from knowledge.selectors import passages_retrieve

    return passages_retrieve(space=live.space, query=query, k=k, query_model_reference=live.query_model_reference)


def _mine_negatives(*, examples, live, top_k: int, limit: int, reporter: _Reporter) -> dict[str, list[str]]:
    """Per query, up to `limit` of the live retriever's top-k chunks that no label judged relevant.

    Chunks of a document judged relevant are left out too: judgments are often made at the
    document level (BEIR qrels, imported labels), and another chunk of a relevant document
    is a likely false negative (the SciFact benchmark found 46% of mined negatives were).
    """
    if limit == 0:
        return {}
    relevant_ids: dict[str, set[int]] = {}
    relevant_texts: dict[str, set[str]] = {}
    relevant_documents: dict[str, set[str]] = {}
    for example in examples:
        relevant_ids.setdefault(example.query, set()).update(p.chunk_id for p in example.relevant if p.chunk_id)
        relevant_texts.setdefault(example.query, set()).update(_text_key(p.text) for p in example.relevant)
        relevant_documents.setdefault(example.query, set()).update(p.document_id for p in example.relevant if p.document_id)
    queries = list(relevant_ids)
    mined: dict[str, list[str]] = {}
    for done, query in enumerate(queries, start=1):
        reporter.raise_if_stopped()
        negatives = [
            chunk.text
            for chunk in _retrieve(live, query, top_k)
            if chunk.chunk_id not in relevant_ids[query]
            and _text_key(chunk.text) not in relevant_texts[query]
            and chunk.document_external_id not in relevant_documents[query]
        ]
        mined[query] = negatives[:limit]
        reporter.tick(done, len(queries))
    return mined


def _examples_in_chunks(*, examples, live, reporter: _Reporter):
    """Contrastive examples whose passages are chunks, the unit the index holds and ranks.

    A passage judged without a chunk (an imported document-level judgment such as a BEIR
    qrel: the whole document) becomes that document's chunk the live retriever scores highest
    for the query, as document-level evaluation credits a document at its best chunk.
    Training on the whole text instead would teach the encoder on inputs it never embeds:
    documents longer than the encoder's window, truncated, against chunk-sized negatives (on
    SciFact, query-only training reached dev nDCG@10 0.837 on best chunks, 0.824 on whole
    abstracts). A passage whose document is not in the knowledge base keeps its text.
    """
    from knowledge.selectors import best_chunk_per_document
    from rag.training import retriever as retriever_training

    judged_whole = sum(len(_documents_judged_whole(example)) for example in examples)
    if judged_whole:
        reporter.phase(f"finding the best chunk of {judged_whole} document(s) judged as a whole", low=0.05, high=0.07)
    training_examples = []
    for done, example in enumerate(examples, start=1):
        if judged_whole:  # a database round trip per query: a phase of its own, which can be cancelled
            reporter.raise_if_stopped()
        best = best_chunk_per_document(
            space=live.space, query=example.query, document_external_ids=_documents_judged_whole(example),
            query_model_reference=live.query_model_reference,
        )  # fmt: skip
        training_examples.append(
            retriever_training.RetrievalTrainingExample(
                query=example.query,
                positives=[_chunk_text(p, best) for p in example.relevant],
                hard_negatives=[_chunk_text(p, best) for p in example.irrelevant],
            )
        )
        if judged_whole:
            reporter.tick(done, len(examples))
    return training_examples


def _documents_judged_whole(example) -> list[str]:
    """The documents an example judges as a whole: passages that name a document but no chunk."""
    return sorted({p.document_id for p in (*example.relevant, *example.irrelevant) if p.chunk_id is None and p.document_id})


def _chunk_text(passage, best_chunks: dict) -> str:
    if passage.chunk_id is None and passage.document_id in best_chunks:
        return best_chunks[passage.document_id].text
    return passage.text


def _free_accelerator_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _retriever_fields(*, folder: Path, live, query_only: bool) -> tuple[dict[str, Any], str]:
    from rag.training.retriever import load_trained_retriever

    query_encoder, document_encoder = load_trained_retriever(folder)
    if query_only:
        # Document vectors stay valid: the candidate shares the live space.
        return {"embedding_space": live.space, "query_model_reference": _relative(query_encoder)}, ""
    reference = _relative(document_encoder)
    return {"query_model_reference": reference, "dimensions": live.space.dimensions}, reference


def _train_contrastive(*, run: TrainingRun, folder: Path, reporter: _Reporter) -> _Trained:
    from rag.training import retriever as retriever_training

    parameters = run.parameters
    query_only = run.mode == "contrastive_query_only"
    examples = [example for example in _train_examples(run) if example.relevant]
    if not examples:
        raise InvalidInput("No training example has a passage judged relevant.")
    live, base_model = _live_retriever(run)
    reporter.phase(f"mining negatives with the live retriever ({live.version})", low=0.0, high=0.05)
    mined = _mine_negatives(
        examples=examples, live=live, top_k=parameters["top_k"], limit=parameters["mined_negatives"], reporter=reporter
    )
    training_examples = _examples_in_chunks(examples=examples, live=live, reporter=reporter)
    reporter.phase(
        f"training {'the query encoder' if query_only else 'the encoder'} from {live.space.retriever_version} "
        f"on {len(training_examples)} queries",
        low=0.07,
        high=0.95,
    )
    result = retriever_training.train_contrastive(
        base_model_path=base_model,
        examples=training_examples,
        output_path=folder,
        epochs=parameters["epochs"],
        batch_size=parameters["batch_size"],
        learning_rate=parameters["learning_rate"],
        warmup_ratio=parameters["warmup_ratio"],
        seed=parameters["seed"],
        query_only=query_only,
        mined_negatives=mined,
        mini_batch_size=parameters.get("mini_batch_size"),
        device=parameters.get("device"),
        progress=reporter.progress,
        should_stop=reporter.should_stop,
    )
    fields, space_reference = _retriever_fields(folder=folder, live=live, query_only=query_only)
    return _Trained(folder, fields, result.parameters, result.training_curve, space_reference)


def _train_lsr(*, run: TrainingRun, folder: Path, reporter: _Reporter) -> _Trained:
    from rag.generation import ContextPassage, HFGenerator
    from rag.training import retriever as retriever_training

    parameters = run.parameters
    examples = [example for example in _train_examples(run) if example.gold_answer.strip()]
    if not examples:
        raise InvalidInput("No training example has a gold answer.")
    live, base_model = _live_retriever(run)
    reporter.phase(f"retrieving the top {parameters['top_k']} chunks with {live.version}", low=0.0, high=0.05)
    lsr_examples = []
    for done, example in enumerate(examples, start=1):
        reporter.raise_if_stopped()
        chunks = [chunk.text for chunk in _retrieve(live, example.query, parameters["top_k"])]
        lsr_examples.append(
            retriever_training.LsrTrainingExample(query=example.query, chunks=chunks, answer=example.gold_answer.strip())
        )
        reporter.tick(done, len(examples))
    reporter.phase(f"scoring chunks with the language model {parameters['base_model']}", low=0.05, high=0.35)
    language_model = HFGenerator(model_path=parameters["base_model"], device=parameters.get("device"))
    total = sum(len(example.chunks) for example in lsr_examples)
    scored = 0

    def lm_scorer(query: str, chunk: str, answer: str) -> float:
        nonlocal scored
        reporter.raise_if_stopped()
        score = language_model.answer_log_likelihood(query=query, passage=ContextPassage(text=chunk), answer=answer)
        scored += 1
        reporter.tick(scored, total)
        return score

    lm_scores = retriever_training.score_chunks_with_lm(lm_scorer=lm_scorer, examples=lsr_examples)
    del language_model  # free its memory before the retriever trains
    _free_accelerator_memory()
    reporter.phase(f"training the retriever on {len(lsr_examples)} queries (KL to the LM's preferences)", low=0.35, high=0.95)
    result = retriever_training.train_lsr(
        base_model_path=base_model,
        examples=lsr_examples,
        lm_log_likelihoods=lm_scores,
        output_path=folder,
        query_only=parameters["query_only"],
        epochs=parameters["epochs"],
        batch_size=parameters["batch_size"],
        learning_rate=parameters["learning_rate"],
        warmup_ratio=parameters["warmup_ratio"],
        retriever_temperature=parameters["retriever_temperature"],
        lm_temperature=parameters["lm_temperature"],
        seed=parameters["seed"],
        device=parameters.get("device"),
        progress=reporter.progress,
        should_stop=reporter.should_stop,
    )
    fields, space_reference = _retriever_fields(folder=folder, live=live, query_only=parameters["query_only"])
    return _Trained(
        folder, fields, {**result.parameters, "lm": parameters["base_model"]}, result.training_curve, space_reference
    )


def _train_adapter(*, run: TrainingRun, folder: Path, reporter: _Reporter, pairs, method: str) -> _Trained:
    from rag.training import generator as generator_training

    parameters = run.parameters
    reporter.phase(f"training a LoRA adapter ({method}) on {len(pairs)} prompt/answer pairs", low=0.0, high=0.95)
    result = generator_training.train_lora(
        base_model_path=parameters["base_model"],
        pairs=pairs,
        output_path=folder,
        mode=method,
        epochs=parameters["epochs"],
        learning_rate=parameters["learning_rate"],
        warmup_ratio=parameters["warmup_ratio"],
        lora_r=parameters["lora_r"],
        lora_alpha=parameters["lora_alpha"],
        lora_dropout=parameters["lora_dropout"],
        batch_size=parameters["batch_size"],
        max_length=parameters["max_length"],
        seed=parameters["seed"],
        device=parameters.get("device"),
        progress=reporter.progress,
        should_stop=reporter.should_stop,
    )
    fields = {
        "generator_backend": KnowledgeBase.GeneratorBackend.HF,
        "generator_model": parameters["base_model"],
        # Absolute: serving (knowledge.services.turns.generator_for) hands the path to
        # HFGenerator as it is, without resolving it against the artifacts folder.
        "generator_adapter_path": str(folder.resolve()),
    }
    return _Trained(folder, fields, result.parameters, result.training_curve)


def _train_lora_radit(*, run: TrainingRun, folder: Path, reporter: _Reporter) -> _Trained:
    from rag.training import generator as generator_training

    top_k = run.parameters["top_k"]
    examples = []
    for example in _train_examples(run):
        if not example.gold_answer.strip():
            continue
        # The chunks retrieved when the turn was served (frozen in the snapshot), plus any
        # relevant passage a curator attached that the retriever missed.
        passages = [p.text for p in example.retrieved[:top_k]]
        seen = {_text_key(text) for text in passages}
        passages += [p.text for p in example.relevant if _text_key(p.text) not in seen]
        examples.append(
            generator_training.GeneratorTrainingExample(
                query=example.query, answer=example.gold_answer.strip(), passages=passages
            )
        )
    if not examples:
        raise InvalidInput("No training example has a gold answer.")
    pairs = generator_training.build_radit_examples(examples)
    return _train_adapter(run=run, folder=folder, reporter=reporter, pairs=pairs, method="radit")


def _train_lora_raft(*, run: TrainingRun, folder: Path, reporter: _Reporter) -> _Trained:
    from rag.datasets import LabeledPassage, export_raft
    from rag.training import generator as generator_training

    parameters = run.parameters
    # Random distractors come from the corpus; a fixed slice keeps the run repeatable.
    pool = [
        LabeledPassage(text=text, document_id=external_id, chunk_id=pk, title=title)
        for pk, text, external_id, title in Chunk.objects.filter(knowledge_base_id=run.knowledge_base_id)
        .order_by("pk")
        .values_list("pk", "text", "document__external_id", "document__title")[:5000]
    ]
    records = export_raft(
        _train_examples(run),
        distractors=parameters["distractors"],
        oracle_probability=parameters["oracle_probability"],
        seed=parameters["seed"],
        random_pool=pool,
    )
    if not records.records:
        raise InvalidInput(f"No training example could become a RAFT record (left out: {records.skipped}).")
    examples = [
        generator_training.GeneratorTrainingExample(
            query=record["question"], answer=record["answer"], passages=record["context"], cot_answer=record["cot_answer"]
        )
        for record in records
    ]
    pairs = generator_training.build_raft_examples(examples)
    return _train_adapter(run=run, folder=folder, reporter=reporter, pairs=pairs, method="raft")


def _train_openai(*, run: TrainingRun, folder: Path, reporter: _Reporter) -> _Trained:
    from rag.datasets import export_openai
    from rag.training import openai_jobs

    parameters = run.parameters
    export = export_openai(_train_examples(run), max_passages=parameters["max_passages"])
    if not export.records:
        raise InvalidInput(f"No training example could become an OpenAI chat record (left out: {export.skipped}).")
    folder.mkdir(parents=True, exist_ok=True)
    jsonl_path = folder / "training.jsonl"
    jsonl_path.write_text("".join(json.dumps(record) + "\n" for record in export.records), encoding="utf-8")
    base_url = parameters.get("base_url") or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    api_key = os.environ.get("OPENAI_API_KEY", "")
    reporter.phase(f"uploading {len(export.records)} chat examples to {base_url}", low=0.0, high=0.05)
    file_id = openai_jobs.upload_training_file(base_url=base_url, api_key=api_key, jsonl_path=jsonl_path)
    hyperparameters = {
        key: parameters[name]
        for name, key in (("epochs", "n_epochs"), ("batch_size", "batch_size"), ("learning_rate_multiplier", "learning_rate_multiplier"))
        if name in parameters
    }
    job = openai_jobs.create_fine_tuning_job(
        base_url=base_url,
        api_key=api_key,
        training_file=file_id,
        model=parameters["model"],
        suffix=parameters.get("suffix") or f"ragloop-{run.knowledge_base.slug}"[:40],
        hyperparameters=hyperparameters or None,
        seed=parameters["seed"],
    )
    reporter.phase(f"fine-tuning job {job['id']} created (training file {file_id}); waiting for it", low=0.05, high=0.95)
    final = openai_jobs.wait_for_job(
        base_url=base_url,
        api_key=api_key,
        job_id=job["id"],
        poll_seconds=parameters["poll_seconds"],
        timeout=parameters.get("timeout_seconds"),
        should_stop=reporter.should_stop,
        progress=reporter.progress,
    )
    (folder / "job.json").write_text(json.dumps(final, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if final["status"] != "succeeded":
        detail = final.get("error") or "no details"
        raise openai_jobs.FineTuningError(f"fine-tuning job {job['id']} {final['status']}: {detail}")
    fine_tuned_model = final.get("fine_tuned_model")
    if not isinstance(fine_tuned_model, str) or not fine_tuned_model:
        raise openai_jobs.FineTuningError(f"fine-tuning job {job['id']} succeeded without a fine_tuned_model name")
    fields = {"generator_backend": KnowledgeBase.GeneratorBackend.OPENAI, "generator_model": fine_tuned_model}
    trainer_parameters = {
        "method": "openai",
        "base_url": base_url,
        "job_id": job["id"],
        "training_file": file_id,
        "examples": len(export.records),
        "skipped": export.skipped,
        "trained_tokens": final.get("trained_tokens"),
    }
    return _Trained(folder, fields, trainer_parameters, reporter.curve)


TRAINERS: dict[str, Callable[..., _Trained]] = {
    "contrastive": _train_contrastive,
    "contrastive_query_only": _train_contrastive,
    "lsr": _train_lsr,
    "lora_radit": _train_lora_radit,
    "lora_raft": _train_lora_raft,
    "openai": _train_openai,
}
