"""Loop cycles: starting one when a policy's trigger fires, and moving it through its stages.

snapshot -> train -> embed (full-mode retrievers) -> evaluate -> gate -> promoted, awaiting
review or refused. `loop_cycle_advance` is the only thing that moves a cycle; it locks the row,
looks at what the cycle already has and does just the next step, so calling it twice, from a
redelivered message, the tick or a new worker after a crash, does no harm. The work itself
is done by the existing jobs (a training run, an embedding job, an evaluation job); a cycle
only points at them, so a killed worker leaves rows that the next advance picks up.

Never two running cycles per policy: starting one takes the component's advisory lock for the
transaction (the same key training runs hold for a whole run, so no cycle starts while the
component trains) and the database refuses a second running cycle (one_running_cycle_per_policy).
"""

import logging

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from knowledge.errors import Conflict, InvalidInput, ServiceError
from knowledge.models import EmbeddingSpace
from rag.gate import GateRule, gate_decide
from training.models import EvaluationJob, LoopCycle, ModelVersion, RetrainingPolicy, TrainingRun
from training.services.evaluation_jobs import evaluation_job_start
from training.services.loop.policies import new_final_labels
from training.services.notifications import notify
from training.services.runs import training_run_start
from training.services.runs.engine import _LOCK_CODES
from training.services.runs.lifecycle import STALLED_PREFIX
from training.services.runs.shared import log_line
from training.services.versions import model_version_promote, model_version_reject

logger = logging.getLogger(__name__)

# A run whose worker died is trained again on the same snapshot, at most this many times in all.
MAX_TRAINING_ATTEMPTS = 3


def _enqueue_advance(cycle_id: int) -> None:
    from training.tasks import loop_cycle_advance_task

    loop_cycle_advance_task.delay(cycle_id)


def _component_locked_for_transaction(knowledge_base_id: int, component: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_try_advisory_xact_lock(%s::integer, %s::integer)", [int(knowledge_base_id), _LOCK_CODES[component]]
        )
        return bool(cursor.fetchone()[0])


def loop_cycle_start(*, policy: RetrainingPolicy, trigger: str, triggered_by=None, note: str = "") -> LoopCycle:
    """Start a cycle of `policy`; Conflict when one is running or the component is training."""
    with transaction.atomic():
        if not _component_locked_for_transaction(policy.knowledge_base_id, policy.component):
            raise Conflict(
                f"The {policy.component} of {policy.knowledge_base.slug!r} is training or another cycle is starting; "
                "the policy's next check will try again."
            )
        policy = RetrainingPolicy.objects.select_for_update().select_related("knowledge_base").get(pk=policy.pk)
        running = LoopCycle.objects.filter(policy=policy, status=LoopCycle.Status.RUNNING).first()
        if running is not None:
            raise Conflict(f"Cycle #{running.pk} of policy {policy.name!r} is still running ({running.stage}).")
        labels = new_final_labels(knowledge_base=policy.knowledge_base, component=policy.component)
        now = timezone.now()
        try:
            with transaction.atomic():
                cycle = LoopCycle.objects.create(
                    policy=policy,
                    knowledge_base=policy.knowledge_base,
                    component=policy.component,
                    trigger=trigger,
                    triggered_by=triggered_by,
                    labels_at_start=labels.new_final_labels,
                    stage_started_at=now,
                    log=log_line(f"started by {LoopCycle.Trigger(trigger).label}{': ' + note if note else ''}"),
                )
        except IntegrityError:  # a concurrent start won the race the lock did not cover
            raise Conflict(f"A cycle of policy {policy.name!r} is already running.") from None
        transaction.on_commit(lambda: _enqueue_advance(cycle.pk))
    return cycle


def loop_cycle_run_now(*, policy: RetrainingPolicy, actor=None) -> LoopCycle:
    """The "run now" button: a manual cycle, whatever the triggers say (even with the policy off)."""
    return loop_cycle_start(policy=policy, trigger=LoopCycle.Trigger.MANUAL, triggered_by=actor)


# --- moving a cycle on -------------------------------------------------------------------


def _log(cycle: LoopCycle, message: str) -> None:
    cycle.log += log_line(message)


def _enter(cycle: LoopCycle, stage: str) -> None:
    """Close the current stage's clock and start the next stage's."""
    now = timezone.now()
    if cycle.stage_started_at is not None:
        spent = (now - cycle.stage_started_at).total_seconds()
        cycle.stage_seconds = {**cycle.stage_seconds, cycle.stage: round(cycle.stage_seconds.get(cycle.stage, 0) + spent, 3)}
    cycle.stage = stage
    cycle.stage_started_at = now


def _finish(cycle: LoopCycle, status: str, *, message: str, error: str = "") -> None:
    _enter(cycle, LoopCycle.Stage.DONE)
    cycle.status = status
    cycle.error = error
    cycle.finished_at = timezone.now()
    _log(cycle, message)
    payload = {
        "component": cycle.component,
        "policy": cycle.policy.name,
        "cycle": cycle.pk,
        "status": status,
        "candidate": cycle.candidate.name if cycle.candidate_id else None,
        "gate": cycle.gate_outcome or None,
        "error": error or None,
    }
    knowledge_base = cycle.knowledge_base
    if status == LoopCycle.Status.REFUSED:
        notify(knowledge_base=knowledge_base, event="gate.refused", payload={**payload, "reason": message})
    elif status == LoopCycle.Status.AWAITING_REVIEW:
        notify(knowledge_base=knowledge_base, event="candidate.awaiting_review", payload=payload)
    notify(knowledge_base=knowledge_base, event="cycle.finished", payload=payload)


def loop_cycle_advance(*, cycle_id: int) -> LoopCycle | None:
    """Do the cycle's next step if it can be done now; returns the cycle as it is after."""
    with transaction.atomic():
        cycle = (
            LoopCycle.objects.select_for_update(of=("self",))
            .select_related("policy", "knowledge_base", "training_run", "candidate", "evaluation_job")
            .filter(pk=cycle_id)
            .first()
        )
        if cycle is None or cycle.is_finished:
            return cycle
        before = (cycle.stage, cycle.status)
        try:
            _STEPS[cycle.stage](cycle)
        except ServiceError as error:
            _finish(cycle, LoopCycle.Status.FAILED, message=f"failed in stage {cycle.stage}: {error}", error=str(error))
        cycle.save()
        moved = (cycle.stage, cycle.status) != before and not cycle.is_finished
        if moved:
            # The next stage may be ready at once (a query-only candidate skips embedding).
            transaction.on_commit(lambda: _enqueue_advance(cycle.pk))
    return cycle


def _step_snapshot(cycle: LoopCycle) -> None:
    """Freeze the labels and queue the training run (one transaction: never one without the other)."""
    policy = cycle.policy
    try:
        with transaction.atomic():
            run = training_run_start(
                knowledge_base=cycle.knowledge_base,
                component=cycle.component,
                mode=policy.mode,
                parameters=policy.parameters,
                snapshot=cycle.snapshot,
                include_synthetic=policy.include_synthetic,
            )
    except Conflict as busy:  # a person's run of the component: wait for it, the tick retries
        if "waiting for another run" not in cycle.log:
            _log(cycle, f"waiting for another run: {busy}")
        return
    cycle.snapshot = run.snapshot
    cycle.training_run = run
    cycle.training_attempts += 1
    _log(
        cycle,
        f"snapshot {run.snapshot.pk}: {run.snapshot.train_count} train / {run.snapshot.heldout_count} held-out examples; "
        f"training run #{run.pk} ({policy.mode}) queued",
    )
    _enter(cycle, LoopCycle.Stage.TRAIN)


def _step_train(cycle: LoopCycle) -> None:
    run = TrainingRun.objects.get(pk=cycle.training_run_id)
    if not run.is_finished:
        return
    if run.status == TrainingRun.Status.SUCCEEDED:
        candidate = ModelVersion.objects.select_related("embedding_space").get(training_run=run)
        cycle.candidate = candidate
        _log(cycle, f"run #{run.pk} trained candidate {candidate.name}")
        space = candidate.embedding_space
        if space is not None and space.retriever_version == candidate.name:
            _enter(cycle, LoopCycle.Stage.EMBED)
        else:
            _enter(cycle, LoopCycle.Stage.EVALUATE)
        return
    if run.status == TrainingRun.Status.FAILED and run.error.startswith(STALLED_PREFIX):
        if cycle.training_attempts < MAX_TRAINING_ATTEMPTS:
            # The worker died mid-run: nothing was registered, so training again makes one candidate.
            _log(cycle, f"run #{run.pk} stopped with its worker ({run.error}); training again on the same snapshot")
            _enter(cycle, LoopCycle.Stage.SNAPSHOT)
            _step_snapshot(cycle)
            return
    raise InvalidInput(f"training run #{run.pk} {run.status}: {run.error or 'no error recorded'}")


def _step_embed(cycle: LoopCycle) -> None:
    space = EmbeddingSpace.objects.get(pk=cycle.candidate.embedding_space_id)
    if space.status == EmbeddingSpace.Status.READY:
        _log(cycle, f"space {space.retriever_version} embedded")
        _enter(cycle, LoopCycle.Stage.EVALUATE)
    elif space.status != EmbeddingSpace.Status.BUILDING:
        raise InvalidInput(f"the candidate's embedding space is {space.status}")


def _live_version_id(cycle: LoopCycle) -> int | None:
    return (
        ModelVersion.objects.filter(
            knowledge_base_id=cycle.knowledge_base_id, component=cycle.component, status=ModelVersion.Status.LIVE
        )
        .values_list("pk", flat=True)
        .first()
    )


def _step_evaluate(cycle: LoopCycle) -> None:
    job = cycle.evaluation_job
    if job is None:
        # The engine queued one when it registered the candidate (or when its space became ready).
        job = EvaluationJob.objects.filter(candidate=cycle.candidate).order_by("-created_at", "-pk").first()
        if job is None:
            job = evaluation_job_start(version=cycle.candidate)
        cycle.evaluation_job = job
        _log(cycle, f"evaluation job #{job.pk} {job.status}")
    job = EvaluationJob.objects.select_related("evaluation").get(pk=job.pk)
    if not job.is_finished:
        return
    if job.status == EvaluationJob.Status.FAILED:
        raise InvalidInput(f"evaluation job #{job.pk} failed: {job.error}")
    if job.evaluation is None or job.evaluation.baseline_id != _live_version_id(cycle):
        # Another version went live since: the figures compare with the wrong baseline.
        cycle.evaluation_job = evaluation_job_start(version=cycle.candidate)
        _log(cycle, f"the live version changed during evaluation; evaluating again (job #{cycle.evaluation_job.pk})")
        return
    _enter(cycle, LoopCycle.Stage.GATE)
    _step_gate(cycle)


def _step_gate(cycle: LoopCycle) -> None:
    policy = cycle.policy
    evaluation = EvaluationJob.objects.select_related("evaluation").get(pk=cycle.evaluation_job_id).evaluation
    rule = GateRule(
        metric=policy.gate_metric, margin=policy.gate_margin, guards=policy.gate_guards, min_queries=policy.gate_min_queries
    )
    outcome = gate_decide(intervals=evaluation.delta_intervals, rule=rule)
    cycle.gate_outcome = {
        **outcome.as_dict(),
        "evaluation": evaluation.pk,
        "baseline": evaluation.baseline_name,
        "margin": policy.gate_margin,
        "min_queries": policy.gate_min_queries,
        "tolerances": policy.gate_guards,
        "auto_promote": policy.auto_promote,
    }
    candidate = cycle.candidate
    _log(cycle, f"gate {outcome.summary}; baseline {evaluation.baseline_name}")
    if not outcome.passed:
        model_version_reject(version=candidate, reason=f"policy {policy.name}: {'; '.join(outcome.reasons)}")
        _finish(cycle, LoopCycle.Status.REFUSED, message=f"{candidate.name} rejected: {'; '.join(outcome.reasons)}")
        return
    if not policy.auto_promote:
        _finish(cycle, LoopCycle.Status.AWAITING_REVIEW, message=f"{candidate.name} passed the gate and awaits an admin's review")
        return
    try:
        with transaction.atomic():
            model_version_promote(
                version=candidate,
                reason=f"passed the gate of policy {policy.name} (cycle #{cycle.pk}): {outcome.summary}",
                automatic=True,
                actor_name=f"policy {policy.name}",
            )
    except Conflict as not_ready:  # e.g. its space's index is still being built: the tick retries
        if str(not_ready) not in cycle.log:
            _log(cycle, f"promotion waits: {not_ready}")
        return
    _finish(cycle, LoopCycle.Status.PROMOTED, message=f"{candidate.name} promoted by policy {policy.name}")


_STEPS = {
    LoopCycle.Stage.SNAPSHOT: _step_snapshot,
    LoopCycle.Stage.TRAIN: _step_train,
    LoopCycle.Stage.EMBED: _step_embed,
    LoopCycle.Stage.EVALUATE: _step_evaluate,
    LoopCycle.Stage.GATE: _step_gate,
}


def loop_cycles_advance_soon(*, training_run_id: int | None = None, candidate_id: int | None = None) -> list[int]:
    """Queue an advance of the running cycles waiting on this run or candidate."""
    cycles = LoopCycle.objects.filter(status=LoopCycle.Status.RUNNING)
    if training_run_id is not None:
        cycles = cycles.filter(training_run_id=training_run_id)
    elif candidate_id is not None:
        cycles = cycles.filter(candidate_id=candidate_id)
    else:
        return []
    cycle_ids = list(cycles.values_list("pk", flat=True))
    for cycle_id in cycle_ids:
        _enqueue_advance(cycle_id)
    return cycle_ids

