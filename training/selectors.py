"""Read operations of the training app: snapshots, model versions with their lineage and latest
evaluation, training runs and the promotion log, webhook endpoints with their deliveries, each
page in a fixed number of queries; and the loop page's policies, cycles and charts."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from django.contrib.auth import get_user_model
from django.db.models import Count, Prefetch, Q
from django.db.models.functions import TruncDate
from django.utils import timezone

from curation.models import Label
from knowledge.errors import NotFound
from knowledge.models import KnowledgeBase
from rag.progress import duration_text, remaining_seconds
from training.models import (
    Component,
    DatasetSnapshot,
    ErasureReceipt,
    Evaluation,
    EvaluationJob,
    EvaluationQueryResult,
    EvaluationSet,
    LoopCycle,
    ModelVersion,
    PromotionEvent,
    RetrainingPolicy,
    TrainingRun,
    WebhookAttempt,
    WebhookEndpoint,
    WebhookMessage,
)
from training.services.evaluation import (
    GENERATOR_METRICS,
    HEADLINE_METRIC,
    RETRIEVER_METRICS,
)
from training.services.loop import new_final_labels, policy_erased_live_version, policy_next_run_at
from training.services.loop.policies import ErasedLiveVersion
from training.services.versions import rollback_target

# A per-query delta smaller than this is "unchanged" (float noise, not a change in ranking).
UNCHANGED_TOLERANCE = 1e-9
QUERY_ROWS_SHOWN = 50
RUNS_SHOWN = 20
EVENTS_SHOWN = 50
SNAPSHOTS_SHOWN = 10
JOBS_SHOWN = 10
WEBHOOK_MESSAGES_SHOWN = 50
# The figures shown next to each version in the list, from its stored metrics.
LIST_METRICS = {
    Component.RETRIEVER: ("ndcg@10", "recall@10", "mrr@10"),
    Component.GENERATOR: ("f1", "exact_match", "groundedness"),
    Component.RERANKER: ("ndcg@10", "recall@10", "mrr@10"),
}


# --- look-ups ---------------------------------------------------------------------------------


def snapshot_get(*, knowledge_base: KnowledgeBase, snapshot_id: int | str | None = None) -> DatasetSnapshot:
    """A snapshot of the knowledge base by id, or its latest when `snapshot_id` is None or "latest"."""
    snapshots = DatasetSnapshot.objects.filter(knowledge_base=knowledge_base).select_related("knowledge_base")
    if snapshot_id in (None, "", "latest"):
        snapshot = snapshots.order_by("-created_at", "-pk").first()
        if snapshot is None:
            raise NotFound(f"Knowledge base {knowledge_base.slug!r} has no dataset snapshot yet.")
        return snapshot
    try:
        snapshot = snapshots.filter(pk=int(snapshot_id)).first()
    except (TypeError, ValueError):
        snapshot = None
    if snapshot is None:
        raise NotFound(f"Snapshot {snapshot_id!r} not found in {knowledge_base.slug!r}.")
    return snapshot


def model_version_get(*, knowledge_base: KnowledgeBase, name: str) -> ModelVersion:
    version = (
        ModelVersion.objects.filter(knowledge_base=knowledge_base, name=name)
        .select_related("knowledge_base", "parent", "snapshot", "embedding_space", "training_run")
        .first()
    )
    if version is None:
        raise NotFound(f"Model version {name!r} not found in {knowledge_base.slug!r}.")
    return version


def model_versions_list(*, knowledge_base: KnowledgeBase, component: str | None = None) -> list[ModelVersion]:
    versions = ModelVersion.objects.filter(knowledge_base=knowledge_base).select_related("parent", "snapshot", "erasure_receipt")
    if component:
        versions = versions.filter(component=component)
    return list(versions.order_by("component", "-created_at", "-pk"))


def evaluation_latest(*, version: ModelVersion) -> Evaluation | None:
    return (
        Evaluation.objects.filter(candidate=version)
        .select_related("snapshot", "baseline", "candidate")
        .order_by("-created_at", "-pk")
        .first()
    )


# --- the models page --------------------------------------------------------------------------


@dataclass
class ComponentVersions:
    component: str
    versions: list[ModelVersion]
    live: ModelVersion | None
    metric_names: tuple[str, ...]
    # The live version when it was trained on erased data, with what its policy makes of it.
    erased_live: ErasedLiveVersion | None = None
    # The live version is flagged but no retraining policy of the component will replace it.
    erased_live_without_policy: bool = False


@dataclass
class ModelsOverview:
    components: list[ComponentVersions]
    runs: list[TrainingRun]
    active_runs: bool
    events: list[PromotionEvent]
    snapshots: list[DatasetSnapshot]
    # The snapshot whose held-out part every candidate is scored on, if one is pinned.
    pinned_snapshot_id: int | None = None


def training_runs_recent(*, knowledge_base: KnowledgeBase) -> list[TrainingRun]:
    return list(
        TrainingRun.objects.filter(knowledge_base=knowledge_base)
        .select_related("snapshot", "created_by", "model_version")
        .order_by("-created_at", "-pk")[:RUNS_SHOWN]
    )


def runs_active(runs: list[TrainingRun]) -> bool:
    return any(run.status in (TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING) for run in runs)


@dataclass(frozen=True)
class HeadlineFigure:
    name: str
    value: float | None
    delta: float | None  # against the baseline of the version's latest evaluation


def _metric_delta(evaluation, name: str) -> float | None:
    if evaluation is None:
        return None
    candidate, baseline = evaluation.candidate_metrics.get(name), evaluation.baseline_metrics.get(name)
    if candidate is None or baseline is None:
        return None
    return candidate - baseline


def models_overview(*, knowledge_base: KnowledgeBase) -> ModelsOverview:
    """Versions per component (each with its headline figures), recent runs, the promotion log."""
    versions = model_versions_list(knowledge_base=knowledge_base)
    policies = {p.component: p for p in RetrainingPolicy.objects.filter(knowledge_base=knowledge_base)}
    latest_evaluation = {}
    for evaluation in Evaluation.objects.filter(candidate__in=versions).order_by("candidate_id", "-created_at", "-pk"):
        latest_evaluation.setdefault(evaluation.candidate_id, evaluation)
    for version in versions:
        # The delta is the version's latest evaluation against the version live at the time,
        # on the same held-out examples: metrics of two versions evaluated on different
        # snapshots are not comparable, so no delta is made up from them.
        evaluation = latest_evaluation.get(version.pk)
        version.compared_with = evaluation.baseline_name if evaluation else None
        version.headline = [
            HeadlineFigure(
                name=name,
                value=version.metrics.get(name),
                delta=_metric_delta(evaluation, name),
            )
            for name in LIST_METRICS[version.component]
        ]
    components = []
    for component in Component.values:
        live = next((v for v in versions if v.component == component and v.status == ModelVersion.Status.LIVE), None)
        policy = policies.get(component)
        flagged = live is not None and live.trained_on_erased_data
        components.append(
            ComponentVersions(
                component=component,
                versions=[v for v in versions if v.component == component],
                live=live,
                metric_names=LIST_METRICS[component],
                erased_live=policy_erased_live_version(policy) if flagged and policy is not None else None,
                erased_live_without_policy=flagged and policy is None,
            )
        )
    runs = training_runs_recent(knowledge_base=knowledge_base)
    events = list(
        PromotionEvent.objects.filter(knowledge_base=knowledge_base)
        .select_related("from_version", "to_version", "actor")
        .order_by("-created_at", "-pk")[:EVENTS_SHOWN]
    )
    snapshots = list(DatasetSnapshot.objects.filter(knowledge_base=knowledge_base).order_by("-created_at", "-pk")[:SNAPSHOTS_SHOWN])
    pinned = EvaluationSet.objects.filter(knowledge_base=knowledge_base).values_list("snapshot_id", flat=True).first()
    return ModelsOverview(
        components=components, runs=runs, active_runs=runs_active(runs), events=events, snapshots=snapshots,
        pinned_snapshot_id=pinned,
    )


# --- one version ------------------------------------------------------------------------------


@dataclass
class MetricRow:
    name: str
    candidate: float | None
    baseline: float | None
    headline: bool
    # The paired bootstrap 95% interval of the change ({"low", "high", ...}), when computed.
    interval: dict | None = None

    @property
    def delta(self) -> float | None:
        if self.candidate is None or self.baseline is None:
            return None
        return self.candidate - self.baseline


@dataclass
class QueryDiff:
    """One held-out query: both sides' figures and what each returned."""

    result: EvaluationQueryResult
    query: str
    delta: float
    candidate_score: float | None
    baseline_score: float | None
    candidate_documents: list[dict[str, Any]] = field(default_factory=list)
    baseline_documents: list[dict[str, Any]] = field(default_factory=list)
    candidate_answer: str = ""
    baseline_answer: str = ""
    gold_answer: str = ""
    relevant_documents: list[str] = field(default_factory=list)


@dataclass
class VersionReview:
    version: ModelVersion
    snapshot: DatasetSnapshot | None
    snapshot_curators: list[str]
    evaluation: Evaluation | None
    metric_rows: list[MetricRow]
    headline: str
    counts: dict[str, int]
    improved: list[QueryDiff]
    regressed: list[QueryDiff]
    unchanged: list[QueryDiff]
    live: ModelVersion | None
    # The loop cycles that made it (gate outcome) and its evaluation jobs, newest first.
    cycles: list = field(default_factory=list)
    evaluation_jobs: list = field(default_factory=list)


def _documents(side: dict, relevant: set[str]) -> list[dict[str, Any]]:
    return [{**document, "relevant": document.get("id") in relevant} for document in side.get("documents", [])[:5]]


def _query_diff(result: EvaluationQueryResult, headline: str) -> QueryDiff:
    example = result.example
    relevant = {p.get("document_id") for p in example.relevant} - {None, ""}
    return QueryDiff(
        result=result,
        query=example.query,
        delta=result.delta,
        candidate_score=result.candidate.get(headline),
        baseline_score=result.baseline.get(headline),
        candidate_documents=_documents(result.candidate, relevant),
        baseline_documents=_documents(result.baseline, relevant),
        candidate_answer=result.candidate.get("answer", ""),
        baseline_answer=result.baseline.get("answer", ""),
        gold_answer=example.gold_answer,
        relevant_documents=sorted(relevant),
    )


def model_version_review(*, version: ModelVersion) -> VersionReview:
    """Lineage, the latest evaluation side by side, and the queries that improved or regressed."""
    snapshot = version.snapshot
    curators: list[str] = []
    if snapshot is not None and snapshot.curator_ids:
        curators = list(
            get_user_model().objects.filter(pk__in=snapshot.curator_ids).order_by("username").values_list("username", flat=True)
        )
    live = (
        ModelVersion.objects.filter(
            knowledge_base_id=version.knowledge_base_id, component=version.component, status=ModelVersion.Status.LIVE
        ).first()
    )
    evaluation = evaluation_latest(version=version)
    headline = HEADLINE_METRIC[version.component]
    names = RETRIEVER_METRICS if version.component == Component.RETRIEVER else GENERATOR_METRICS
    rows: list[MetricRow] = []
    counts = {"improved": 0, "regressed": 0, "unchanged": 0}
    improved: list[QueryDiff] = []
    regressed: list[QueryDiff] = []
    unchanged: list[QueryDiff] = []
    if evaluation is not None:
        rows = [
            MetricRow(
                name,
                evaluation.candidate_metrics.get(name),
                evaluation.baseline_metrics.get(name),
                name == headline,
                evaluation.delta_intervals.get(name),
            )
            for name in names
        ]
        results = EvaluationQueryResult.objects.filter(evaluation=evaluation).select_related("example")
        up = Q(delta__gt=UNCHANGED_TOLERANCE)
        down = Q(delta__lt=-UNCHANGED_TOLERANCE)
        counts = results.aggregate(
            improved=Count("pk", filter=up), regressed=Count("pk", filter=down), unchanged=Count("pk", filter=~up & ~down)
        )
        improved = [_query_diff(r, headline) for r in results.filter(up).order_by("-delta", "pk")[:QUERY_ROWS_SHOWN]]
        regressed = [_query_diff(r, headline) for r in results.filter(down).order_by("delta", "pk")[:QUERY_ROWS_SHOWN]]
        unchanged = [_query_diff(r, headline) for r in results.exclude(up | down).order_by("pk")[:QUERY_ROWS_SHOWN]]
    return VersionReview(
        version=version,
        snapshot=snapshot,
        snapshot_curators=curators,
        evaluation=evaluation,
        metric_rows=rows,
        headline=headline,
        counts=counts,
        improved=improved,
        regressed=regressed,
        unchanged=unchanged,
        live=live,
        cycles=list(LoopCycle.objects.filter(candidate=version).select_related("policy").order_by("-pk")),
        evaluation_jobs=list(EvaluationJob.objects.filter(candidate=version).order_by("-created_at", "-pk")[:JOBS_SHOWN]),
    )


# --- the loop ---------------------------------------------------------------------------------

CYCLES_SHOWN = 50
LOOP_CHART_DAYS = 30


@dataclass
class PolicyStatus:
    policy: Any
    next_run_at: Any  # datetime | None
    new_final_labels: int
    labels_since: Any  # datetime | None
    running_cycle: Any  # LoopCycle | None
    erased: ErasedLiveVersion | None = None  # the live version, when trained on erased data

    @property
    def labels_progress(self) -> float | None:
        """Share of the label threshold reached (capped at 1), None without a label trigger."""
        if not self.policy.min_new_labels:
            return None
        return min(1.0, self.new_final_labels / self.policy.min_new_labels)


@dataclass
class VersionPoint:
    name: str
    created_at: Any
    value: float | None
    status: str
    is_live: bool


@dataclass
class LoopOverview:
    knowledge_base: KnowledgeBase
    policies: list[PolicyStatus]
    missing_components: list[str]
    cycles: list
    version_points: dict[str, list[VersionPoint]]  # component -> its versions, oldest first
    labels_per_day: list[tuple[Any, int]]  # (date, final labels submitted that day), oldest first
    cycles_per_day: dict[Any, int]


def loop_overview(*, knowledge_base: KnowledgeBase) -> LoopOverview:
    """Everything the loop page shows: policies with what their triggers see, the cycle history
    and the figures of the two charts."""
    policies = []
    for policy in RetrainingPolicy.objects.filter(knowledge_base=knowledge_base).order_by("component"):
        count = new_final_labels(knowledge_base=knowledge_base, component=policy.component)
        policies.append(
            PolicyStatus(
                policy=policy,
                next_run_at=policy_next_run_at(policy),
                new_final_labels=count.new_final_labels,
                labels_since=count.since,
                running_cycle=policy.cycles.filter(status=LoopCycle.Status.RUNNING).first(),
                erased=policy_erased_live_version(policy),
            )
        )
    cycles = list(
        LoopCycle.objects.filter(knowledge_base=knowledge_base)
        .select_related("policy", "candidate", "training_run", "evaluation_job", "triggered_by")
        .order_by("-created_at", "-pk")[:CYCLES_SHOWN]
    )
    version_points: dict[str, list[VersionPoint]] = {}
    for version in ModelVersion.objects.filter(knowledge_base=knowledge_base).order_by("created_at", "pk"):
        value = version.metrics.get(HEADLINE_METRIC[version.component])
        version_points.setdefault(version.component, []).append(
            VersionPoint(
                name=version.name,
                created_at=version.created_at,
                value=value if isinstance(value, int | float) else None,
                status=version.status,
                is_live=version.status == ModelVersion.Status.LIVE,
            )
        )
    today = timezone.localdate()
    first_day = today - dt.timedelta(days=LOOP_CHART_DAYS - 1)
    counts = dict(
        Label.objects.filter(turn__knowledge_base=knowledge_base, skipped=False, created_at__date__gte=first_day)
        .annotate(day=TruncDate("created_at"))
        .values_list("day")
        .annotate(count=Count("pk"))
        .values_list("day", "count")
    )
    cycles_per_day = dict(
        LoopCycle.objects.filter(knowledge_base=knowledge_base, created_at__date__gte=first_day)
        .annotate(day=TruncDate("created_at"))
        .values_list("day")
        .annotate(count=Count("pk"))
        .values_list("day", "count")
    )
    days = [first_day + dt.timedelta(days=n) for n in range(LOOP_CHART_DAYS)]
    return LoopOverview(
        knowledge_base=knowledge_base,
        policies=policies,
        missing_components=[c for c in Component.values if c not in {p.policy.component for p in policies}],
        cycles=cycles,
        version_points=version_points,
        labels_per_day=[(day, counts.get(day, 0)) for day in days],
        cycles_per_day={day: cycles_per_day.get(day, 0) for day in days},
    )


def loop_cycle_get(*, knowledge_base: KnowledgeBase, cycle_id: int):
    cycle = (
        LoopCycle.objects.select_related("policy", "candidate", "training_run", "evaluation_job", "snapshot")
        .filter(knowledge_base=knowledge_base, pk=cycle_id)
        .first()
    )
    if cycle is None:
        raise NotFound(f"Knowledge base {knowledge_base.slug!r} has no loop cycle #{cycle_id}.")
    return cycle


def erasure_receipts_list(*, knowledge_base: KnowledgeBase, limit: int = 100) -> list[ErasureReceipt]:
    return list(
        ErasureReceipt.objects.filter(knowledge_base=knowledge_base).select_related("actor").order_by("-created_at", "-pk")[:limit]
    )


def retraining_policy_get(*, knowledge_base: KnowledgeBase, component: str):
    policy = RetrainingPolicy.objects.filter(knowledge_base=knowledge_base, component=component).first()
    if policy is None:
        raise NotFound(f"Knowledge base {knowledge_base.slug!r} has no {component} retraining policy; set one first.")
    return policy
# --- webhooks ---------------------------------------------------------------------------------


@dataclass
class WebhooksOverview:
    endpoints: list[WebhookEndpoint]  # each with delivered, pending and failed message counts
    messages: list[WebhookMessage]  # the latest first, each with its endpoint and attempts
    events: list[tuple[str, str]] = field(default_factory=lambda: list(WebhookEndpoint.Event.choices))


def webhook_endpoint_get(*, knowledge_base: KnowledgeBase, endpoint_id: int) -> WebhookEndpoint:
    endpoint = WebhookEndpoint.objects.filter(knowledge_base=knowledge_base, pk=endpoint_id).first()
    if endpoint is None:
        raise NotFound(f"No webhook endpoint #{endpoint_id} in {knowledge_base.slug!r}.")
    return endpoint


def webhooks_overview(*, knowledge_base: KnowledgeBase) -> WebhooksOverview:
    """The knowledge base's endpoints and its latest messages with every attempt (three queries)."""
    Status = WebhookMessage.Status
    endpoints = list(
        WebhookEndpoint.objects.filter(knowledge_base=knowledge_base)
        .select_related("created_by")
        .annotate(
            delivered_count=Count("messages", filter=Q(messages__status=Status.DELIVERED)),
            pending_count=Count("messages", filter=Q(messages__status=Status.PENDING)),
            failed_count=Count("messages", filter=Q(messages__status=Status.FAILED)),
        )
        .order_by("pk")
    )
    messages = list(
        WebhookMessage.objects.filter(endpoint__knowledge_base=knowledge_base)
        .select_related("endpoint")
        .prefetch_related(Prefetch("attempts", queryset=WebhookAttempt.objects.order_by("created_at", "pk")))
        .order_by("-created_at", "-pk")[:WEBHOOK_MESSAGES_SHOWN]
    )
    return WebhooksOverview(endpoints=endpoints, messages=messages)


# --- the admins' actions: snapshot, run, promotion and rollback -----------------------------


def snapshot_latest(*, knowledge_base: KnowledgeBase) -> DatasetSnapshot | None:
    return DatasetSnapshot.objects.filter(knowledge_base=knowledge_base).order_by("-created_at", "-pk").first()


def snapshot_heldout_warnings(*, snapshot: DatasetSnapshot) -> list[str]:
    """What an admin should know about a snapshot's held-out part before training on it: empty
    (nothing to evaluate a candidate on), or smaller than a retraining gate's minimum of queries
    (the gate refuses to judge on it), per policy; without policies, the gate's default minimum."""
    pinned = EvaluationSet.objects.filter(knowledge_base_id=snapshot.knowledge_base_id).values_list("snapshot_id", flat=True).first()
    warnings: list[str] = []
    held = snapshot.heldout_count
    if pinned is not None and pinned != snapshot.pk:
        warnings.append(f"Candidates are scored on the pinned evaluation set (snapshot #{pinned}), not on this snapshot's held-out part.")
    if held == 0:
        warnings.append(
            "The held-out part is empty: a candidate trained on this snapshot has nothing of it to be evaluated on. "
            "Label more turns, or take a snapshot with a larger held-out share."
        )
        return warnings
    minimums = dict(
        RetrainingPolicy.objects.filter(knowledge_base_id=snapshot.knowledge_base_id).values_list("component", "gate_min_queries")
    ) or {"": RetrainingPolicy._meta.get_field("gate_min_queries").default}
    for component, minimum in sorted(minimums.items()):
        if held < minimum:
            gate = f"the {component} policy's gate" if component else "the retraining gate's default"
            warnings.append(
                f"The held-out part has {held} queries, fewer than {gate} minimum of {minimum}: "
                "a gate would not judge a candidate on it."
            )
    return warnings


# The latest "loss 0.1234" a trainer wrote to the run's log (training.services.runs.shared._metrics_text).
_LOSS_IN_LOG = re.compile(r"(?:^|[ ,])loss (-?[0-9][0-9.eE+-]*|nan|inf)(?=,|$)", re.MULTILINE)


@dataclass
class RunProgress:
    run: TrainingRun
    eta_seconds: float | None
    eta: str
    current_loss: float | None
    version: ModelVersion | None


def training_run_progress(*, run: TrainingRun) -> RunProgress:
    """A run's state for its page: the ETA at the pace since it started, the latest loss it
    logged, and the model version it made (once it succeeded)."""
    eta_seconds = None
    if run.status == TrainingRun.Status.RUNNING and run.started_at:
        eta_seconds = remaining_seconds(
            elapsed_seconds=(timezone.now() - run.started_at).total_seconds(), fraction_done=run.progress
        )
    losses = _LOSS_IN_LOG.findall(run.log)
    try:
        current_loss = float(losses[-1]) if losses else None
    except ValueError:
        current_loss = None
    return RunProgress(
        run=run, eta_seconds=eta_seconds, eta=duration_text(eta_seconds), current_loss=current_loss,
        version=ModelVersion.objects.filter(training_run=run).first(),
    )  # fmt: skip


@dataclass
class ChangeSummary:
    """What a promotion (or rollback) changes, for its confirmation: every metric of the
    evaluation that compares the two versions, and the ones that got worse by name."""

    version: ModelVersion  # promoted, or rolled back
    live: ModelVersion | None  # serving now (None: the base model)
    after: ModelVersion | None  # serving afterwards (None: the base model)
    evaluation: Evaluation | None
    rows: list[MetricRow]
    # The evaluation's baseline is not what serves now: another version went live since.
    baseline_stale: bool = False

    @property
    def regressions(self) -> list[MetricRow]:
        return [row for row in self.rows if row.delta is not None and row.delta < -UNCHANGED_TOLERANCE]

    @property
    def live_name(self) -> str:
        return self.live.name if self.live else "base"

    @property
    def after_name(self) -> str:
        return self.after.name if self.after else "base"


def _metric_rows(version: ModelVersion, evaluation: Evaluation | None) -> list[MetricRow]:
    if evaluation is None:
        return []
    headline = HEADLINE_METRIC[version.component]
    names = RETRIEVER_METRICS if version.component == Component.RETRIEVER else GENERATOR_METRICS
    return [
        MetricRow(name, evaluation.candidate_metrics.get(name), evaluation.baseline_metrics.get(name), name == headline,
                  evaluation.delta_intervals.get(name))
        for name in names
    ]  # fmt: skip


def _live_version(version: ModelVersion) -> ModelVersion | None:
    return ModelVersion.objects.filter(
        knowledge_base_id=version.knowledge_base_id, component=version.component, status=ModelVersion.Status.LIVE
    ).first()


def model_version_promotion_summary(*, version: ModelVersion) -> ChangeSummary:
    """Promoting `version`: its latest evaluation against the version it was compared with,
    flagged when that is no longer the live one."""
    live = _live_version(version)
    evaluation = evaluation_latest(version=version)
    stale = evaluation is not None and evaluation.baseline_id != (live.pk if live else None)
    return ChangeSummary(version=version, live=live, after=version, evaluation=evaluation,
                         rows=_metric_rows(version, evaluation), baseline_stale=stale)  # fmt: skip


def model_version_rollback_summary(*, version: ModelVersion) -> ChangeSummary:
    """Rolling back the live `version`: what comes back, and the figures given up, i.e. the live
    version's evaluation against it with the signs turned (a metric the version improved is a
    regression of the rollback)."""
    after = rollback_target(knowledge_base=version.knowledge_base, component=version.component, current=version)
    evaluation = evaluation_latest(version=version)
    rows: list[MetricRow] = []
    stale = False
    if evaluation is not None:
        stale = evaluation.baseline_id != (after.pk if after else None)
        rows = [
            MetricRow(row.name, row.baseline, row.candidate, row.headline,
                      {"low": -row.interval["high"], "high": -row.interval["low"]} if row.interval else None)
            for row in _metric_rows(version, evaluation)
        ]  # fmt: skip
    return ChangeSummary(version=version, live=version, after=after, evaluation=evaluation, rows=rows, baseline_stale=stale)
