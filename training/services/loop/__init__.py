"""The continuous loop: retraining policies trigger cycles that snapshot, train, embed,
evaluate, gate and promote (or wait for review) by themselves.

Where things are (imports run one way: cycles -> policies -> schedule):
- schedule: cron expressions and their next fire time in a time zone.
- policies: setting a policy (validated as `train` validates a run) and what its triggers
  read: the next scheduled time, the new final labels since the last training snapshot.
- cycles: starting a cycle and moving it through its stages (idempotent, resumable).
- this module: the checks beat's tick and new labels call.

Schedules are the policy rows themselves, read by one beat entry (`loop-tick`) rather than
django-celery-beat's PeriodicTask rows: the tick must check label counts and resume cycles
anyway, a policy is one row to edit instead of two to keep in step, and an edited schedule
takes effect at the next tick without restarting beat. Two beat processes sending the same
tick are harmless: `loop_cycle_start` takes the component's advisory lock and the database
holds one running cycle per policy.
"""

import logging

from django.utils import timezone

from knowledge.errors import Conflict, ServiceError
from training.models import LoopCycle, RetrainingPolicy
from training.services.evaluation_jobs import evaluation_jobs_resume_stalled
from training.services.loop.cycles import (
    loop_cycle_advance,
    loop_cycle_run_now,
    loop_cycle_start,
    loop_cycles_advance_soon,
)
from training.services.loop.policies import (
    POLICY_FIELDS,
    new_final_labels,
    policy_erased_live_version,
    policy_next_run_at,
    retraining_policy_set,
)
from training.services.loop.schedule import cron_parse, next_fire_time

logger = logging.getLogger(__name__)

__all__ = [
    "POLICY_FIELDS",
    "cron_parse",
    "loop_cycle_advance",
    "loop_cycle_run_now",
    "loop_cycle_start",
    "loop_cycles_advance_soon",
    "loop_policies_check",
    "loop_tick",
    "new_final_labels",
    "next_fire_time",
    "policy_erased_live_version",
    "policy_next_run_at",
    "retraining_policy_set",
]


def _policy_check(policy: RetrainingPolicy, now) -> LoopCycle | None:
    """Start a cycle if the live version was trained on erased data (at once, or by the
    deadline, as the policy says), the policy's schedule came due or enough new labels arrived."""
    if LoopCycle.objects.filter(policy=policy, status=LoopCycle.Status.RUNNING).exists():
        return None
    erased = policy_erased_live_version(policy)
    # One cycle per flagging: a cycle the gate refuses is not started again at every tick; the
    # schedule and the label threshold still apply, and an admin can run one by hand.
    if erased is not None and not erased.cycle_started and (erased.deadline is None or erased.deadline <= now):
        why = f"live version {erased.version.name} was trained on erased data"
        if erased.deadline is not None:
            why += f" (to be replaced by {erased.deadline:%Y-%m-%d %H:%M} UTC)"
        return loop_cycle_start(policy=policy, trigger=LoopCycle.Trigger.ERASURE, note=why)
    due_at = policy_next_run_at(policy)
    if due_at is not None and due_at <= now:
        # Recorded even when the start is refused (the component is training): a missed time
        # is not made up later, the next one is awaited.
        RetrainingPolicy.objects.filter(pk=policy.pk).update(schedule_fired_at=now)
        return loop_cycle_start(policy=policy, trigger=LoopCycle.Trigger.SCHEDULE, note=f"due at {due_at:%Y-%m-%d %H:%M} UTC")
    if policy.min_new_labels:
        count = new_final_labels(knowledge_base=policy.knowledge_base, component=policy.component).new_final_labels
        if count >= policy.min_new_labels:
            return loop_cycle_start(
                policy=policy, trigger=LoopCycle.Trigger.LABELS, note=f"{count} new final labels (threshold {policy.min_new_labels})"
            )
    return None


def loop_policies_check(*, knowledge_base_id: int | None = None) -> list[LoopCycle]:
    """Check the enabled policies (of one knowledge base, or all) and start the cycles due."""
    policies = RetrainingPolicy.objects.filter(enabled=True).select_related("knowledge_base")
    if knowledge_base_id is not None:
        policies = policies.filter(knowledge_base_id=knowledge_base_id)
    now = timezone.now()
    started = []
    for policy in policies:
        try:
            cycle = _policy_check(policy, now)
        except Conflict as busy:
            logger.info("Policy %s: no cycle started now: %s", policy.name, busy)
            continue
        except ServiceError as error:  # e.g. a schedule that no longer parses: the others still run
            logger.warning("Policy %s could not be checked: %s", policy.name, error)
            continue
        if cycle is not None:
            started.append(cycle)
    return started


def loop_tick() -> None:
    """Beat's tick: resume evaluations whose worker died, move running cycles on, check triggers."""
    evaluation_jobs_resume_stalled()
    for cycle_id in LoopCycle.objects.filter(status=LoopCycle.Status.RUNNING).values_list("pk", flat=True):
        loop_cycle_advance(cycle_id=cycle_id)
    loop_policies_check()
