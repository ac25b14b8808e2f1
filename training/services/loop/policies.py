"""Retraining policies: setting one (validated as `train` validates a run), and reading what
its triggers see: the next scheduled time and the final labels since the last snapshot the loop
knows (trained on, started a cycle with, or pinned as the evaluation set)."""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from curation.selectors import turn_final_judgments
from knowledge.errors import Conflict, InvalidInput
from knowledge.models import KnowledgeBase, Turn
from knowledge.services.audit import audit_record
from training.models import (
    Component,
    DatasetSnapshot,
    ErasedDataAction,
    EvaluationSet,
    LoopCycle,
    ModelVersion,
    RetrainingPolicy,
    TrainingRun,
)
from training.services.evaluation import GENERATOR_METRICS, HEADLINE_METRIC, RETRIEVER_METRICS
from training.services.loop.schedule import cron_parse, next_fire_time, time_zone_get
from training.services.runs.parameters import LABEL_FREE_MODES, validated_parameters

METRICS = {Component.RETRIEVER: RETRIEVER_METRICS, Component.GENERATOR: GENERATOR_METRICS, Component.RERANKER: RETRIEVER_METRICS}
DEFAULT_MODE = {Component.RETRIEVER: "contrastive", Component.GENERATOR: "lora_raft", Component.RERANKER: "cross_encoder"}
NAME_MAX_LENGTH = 100

# What `retraining_policy_set` accepts, besides knowledge_base and component.
POLICY_FIELDS = (
    "name", "enabled", "mode", "parameters", "schedule", "timezone", "min_new_labels",
    "gate_metric", "gate_margin", "gate_guards", "gate_min_queries", "auto_promote", "include_synthetic",
    "erased_data_action", "erased_data_deadline_days",
)  # fmt: skip
MAX_ERASED_DATA_DEADLINE_DAYS = 3650
DEFAULT_ERASED_DATA_DEADLINE_DAYS = 30


def _number(name: str, value, *, kind=float, low: float | None = None, high: float | None = None):
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        raise InvalidInput(f"{name} must be {'a whole number' if kind is int else 'a number'}, got {value!r}.")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if low is not None and high is not None else f"at least {low:g}"
        raise InvalidInput(f"{name} must be {bounds}, got {value!r}.")
    return kind(value)


def _validated(knowledge_base: KnowledgeBase, component: str, values: dict) -> dict:
    """The policy's fields after every check; InvalidInput names the first problem."""
    if component not in Component.values:
        raise InvalidInput(f"Component {component!r} is unknown; choose one of {', '.join(Component.values)}.")
    name = str(values.get("name") or "").strip()
    if not name or len(name) > NAME_MAX_LENGTH or "\x00" in name:
        raise InvalidInput(f"A policy needs a name of 1 to {NAME_MAX_LENGTH} characters.")
    enabled, auto_promote = values.get("enabled", True), values.get("auto_promote", False)
    if not isinstance(enabled, bool) or not isinstance(auto_promote, bool):
        raise InvalidInput("enabled and auto_promote must be true or false.")
    mode = values.get("mode") or DEFAULT_MODE[component]
    if mode in LABEL_FREE_MODES:
        raise InvalidInput(
            f"Mode {mode!r} trains once from the corpus, before any label exists: a retraining policy, "
            f"which retrains as labels come in, cannot use it. Start it by hand (manage.py train --mode {mode})."
        )
    include_synthetic = values.get("include_synthetic", False)
    if not isinstance(include_synthetic, bool):
        raise InvalidInput("include_synthetic must be true or false.")
    parameters = values.get("parameters") or {}
    # The run's own checks, so a policy never stores what `train` would refuse.
    validated_parameters(knowledge_base=knowledge_base, component=component, mode=mode, parameters=parameters, snapshot=None)
    schedule = " ".join(str(values.get("schedule") or "").split())
    zone = str(values.get("timezone") or "UTC")
    time_zone_get(zone)
    if schedule:
        cron_parse(schedule)
    min_new_labels = values.get("min_new_labels")
    if min_new_labels in ("", 0):
        min_new_labels = None
    if min_new_labels is not None:
        min_new_labels = _number("min_new_labels", min_new_labels, kind=int, low=1, high=10_000_000)
    metrics = METRICS[component]
    gate_metric = values.get("gate_metric") or HEADLINE_METRIC[component]
    if gate_metric not in metrics:
        raise InvalidInput(f"gate_metric {gate_metric!r} is not a {component} metric; choose one of {', '.join(metrics)}.")
    guards = values.get("gate_guards") or {}
    if not isinstance(guards, dict):
        raise InvalidInput("gate_guards must map metric names to the largest drop each may take, e.g. {\"recall@10\": 0.02}.")
    for metric, tolerance in guards.items():
        if metric not in metrics:
            raise InvalidInput(f"Guard metric {metric!r} is not a {component} metric; choose among {', '.join(metrics)}.")
        _number(f"The tolerance of guard {metric}", tolerance, low=0, high=1)
    erased_data_action = values.get("erased_data_action") or ErasedDataAction.NEXT_CYCLE
    if erased_data_action not in ErasedDataAction.values:
        raise InvalidInput(
            f"erased_data_action {erased_data_action!r} is unknown; choose one of {', '.join(ErasedDataAction.values)}."
        )
    deadline_days = values.get("erased_data_deadline_days")
    deadline_days = DEFAULT_ERASED_DATA_DEADLINE_DAYS if deadline_days in (None, "") else deadline_days
    deadline_days = _number("erased_data_deadline_days", deadline_days, kind=int, low=1, high=MAX_ERASED_DATA_DEADLINE_DAYS)
    return {
        "erased_data_action": erased_data_action,
        "erased_data_deadline_days": deadline_days,
        "name": name,
        "enabled": enabled,
        "mode": mode,
        "parameters": parameters,
        "schedule": schedule,
        "timezone": zone,
        "min_new_labels": min_new_labels,
        "gate_metric": gate_metric,
        "gate_margin": _number("gate_margin", values.get("gate_margin", 0.0), low=0, high=1),
        "gate_guards": {metric: float(tolerance) for metric, tolerance in sorted(guards.items())},
        "gate_min_queries": _number("gate_min_queries", values.get("gate_min_queries", 20), kind=int, low=1, high=10_000_000),
        "auto_promote": auto_promote,
        "include_synthetic": include_synthetic,
    }


def retraining_policy_validate(*, knowledge_base: KnowledgeBase, component: str, values: dict) -> dict:
    """The checks `retraining_policy_set` makes, for forms that save by themselves (the Django admin)."""
    return _validated(knowledge_base, component, values)


def retraining_policy_set(*, knowledge_base: KnowledgeBase, component: str, changes: dict, actor=None) -> RetrainingPolicy:
    """Create the component's policy, or change the given fields of the existing one.

    Unknown fields and invalid values are refused (InvalidInput) before anything is written. A
    changed schedule counts from now: the tick never fires the times that passed before.
    """
    unknown = sorted(set(changes) - set(POLICY_FIELDS))
    if unknown:
        raise InvalidInput(f"Unknown policy field(s): {', '.join(unknown)}. Known: {', '.join(POLICY_FIELDS)}.")
    with transaction.atomic():
        policy = (
            RetrainingPolicy.objects.select_for_update().filter(knowledge_base=knowledge_base, component=component).first()
        )
        current = {field: getattr(policy, field) for field in POLICY_FIELDS} if policy else {"name": f"{knowledge_base.slug}-{component}"}
        values = _validated(knowledge_base, component, {**current, **changes})
        before = {field: getattr(policy, field) for field in POLICY_FIELDS} if policy else None
        if policy is None:
            policy = RetrainingPolicy(knowledge_base=knowledge_base, component=component, created_by=actor)
        if policy.pk is None or values["schedule"] != policy.schedule or values["timezone"] != policy.timezone:
            policy.schedule_fired_at = timezone.now()
        for field, value in values.items():
            setattr(policy, field, value)
        try:
            with transaction.atomic():
                policy.save()
        except IntegrityError:
            raise Conflict(f"Another policy of {knowledge_base.slug!r} is already named {values['name']!r}.") from None
        after = {field: getattr(policy, field) for field in POLICY_FIELDS}
        changed = sorted(field for field in POLICY_FIELDS if before is None or before[field] != after[field])
        audit_record(
            action="policy.change", object_type="retraining_policy", object_id=policy.pk, knowledge_base=knowledge_base,
            actor=actor, before={field: before[field] for field in changed} if before else None,
            after={"component": component, **{field: after[field] for field in changed}},
        )  # fmt: skip
    return policy


@dataclass(frozen=True)
class ErasedLiveVersion:
    """The component's live version, trained on erased data, and what its policy makes of it."""

    version: ModelVersion
    flagged_at: datetime
    # When a replacing cycle must have started (None: the policy retrains at its next check).
    deadline: datetime | None
    # Whether a cycle was already started for it since it was flagged.
    cycle_started: bool


def policy_erased_live_version(policy: RetrainingPolicy) -> ErasedLiveVersion | None:
    """The policy component's live version when it is flagged trained_on_erased_data (None: the
    live version is clean, or there is none)."""
    live = (
        ModelVersion.objects.filter(
            knowledge_base_id=policy.knowledge_base_id, component=policy.component, status=ModelVersion.Status.LIVE,
            trained_on_erased_data=True,
        )  # fmt: skip
        .select_related("erasure_receipt")
        .first()
    )
    if live is None:
        return None
    flagged_at = live.erasure_receipt.created_at if live.erasure_receipt_id else live.created_at
    deadline = None
    if policy.erased_data_action == ErasedDataAction.DEADLINE:
        deadline = flagged_at + timedelta(days=policy.erased_data_deadline_days)
    started = LoopCycle.objects.filter(policy=policy, created_at__gte=flagged_at).filter(
        Q(trigger=LoopCycle.Trigger.ERASURE) | Q(status=LoopCycle.Status.RUNNING)
    )
    return ErasedLiveVersion(version=live, flagged_at=flagged_at, deadline=deadline, cycle_started=started.exists())


def policy_next_run_at(policy: RetrainingPolicy) -> datetime | None:
    """When the schedule fires next (None: no schedule, or the policy is off)."""
    if not policy.schedule or not policy.enabled:
        return None
    after = policy.schedule_fired_at or policy.created_at or timezone.now()
    return next_fire_time(cron_parse(policy.schedule), after=after, time_zone=policy.timezone)


def last_loop_snapshot(*, knowledge_base: KnowledgeBase, component: str) -> DatasetSnapshot | None:
    """The latest snapshot the component was trained (or a cycle started) on, or that was pinned
    as the evaluation set: the labels it holds are not new to the loop."""
    snapshot_ids = [
        TrainingRun.objects.filter(knowledge_base=knowledge_base, component=component, snapshot__isnull=False)
        .order_by("-created_at", "-pk")
        .values_list("snapshot_id", flat=True)
        .first(),
        LoopCycle.objects.filter(knowledge_base=knowledge_base, component=component, snapshot__isnull=False)
        .order_by("-created_at", "-pk")
        .values_list("snapshot_id", flat=True)
        .first(),
        EvaluationSet.objects.filter(knowledge_base=knowledge_base).values_list("snapshot_id", flat=True).first(),
    ]
    return DatasetSnapshot.objects.filter(pk__in=[pk for pk in snapshot_ids if pk]).order_by("-created_at", "-pk").first()


@dataclass(frozen=True)
class LabelCount:
    new_final_labels: int
    since: datetime | None  # the last loop snapshot's time; None: every label counts


def new_final_labels(*, knowledge_base: KnowledgeBase, component: str) -> LabelCount:
    """Turns whose final judgment was made or changed after the last loop snapshot."""
    snapshot = last_loop_snapshot(knowledge_base=knowledge_base, component=component)
    since = snapshot.created_at if snapshot else None
    turns = Turn.objects.filter(knowledge_base=knowledge_base)
    if since is None:
        changed = turns.filter(label_count__gte=1) | turns.filter(adjudication__isnull=False)
    else:
        changed = turns.filter(labels__updated_at__gt=since, labels__skipped=False) | turns.filter(
            adjudication__updated_at__gt=since
        )
    judgments = turn_final_judgments(turns=changed.distinct())
    return LabelCount(new_final_labels=sum(1 for judgment in judgments.values() if judgment.is_final), since=since)
