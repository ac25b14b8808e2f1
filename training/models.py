"""Dataset snapshots of curated labels, training runs, model versions with lineage, evaluations
of a candidate against the live version, and the append-only log of promotions."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from knowledge.models import EmbeddingSpace, KnowledgeBase, Turn


class Component(models.TextChoices):
    RETRIEVER = "retriever"
    GENERATOR = "generator"
    RERANKER = "reranker"


class DatasetSnapshot(models.Model):
    """The curated labels of a knowledge base frozen at one moment; its examples never change."""

    class SplitRule(models.TextChoices):
        # Every copy of a query on one side: a hash of its normalised text (rag.datasets.split_key).
        QUERY_TEXT = "query_text", "by normalised query text"
        # Snapshots made before: a hash of the turn id, so a query logged twice could sit on both sides.
        TURN_ID = "turn_id", "by turn id (older snapshots)"

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="snapshots")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    heldout_share = models.FloatField(default=0.2)
    split_rule = models.CharField(max_length=20, choices=SplitRule.choices, default=SplitRule.QUERY_TEXT)
    example_count = models.PositiveIntegerField(default=0)
    train_count = models.PositiveIntegerField(default=0)
    heldout_count = models.PositiveIntegerField(default=0)
    # Lineage: which labels and adjudications the snapshot was made from, and by whom.
    label_ids = models.JSONField(default=list)
    adjudication_ids = models.JSONField(default=list)
    curator_ids = models.JSONField(default=list)
    # Whether labels of synthetic turns (questions an LLM wrote for a chunk) were taken, and how
    # many of the examples come from such turns (always 0 without include_synthetic).
    include_synthetic = models.BooleanField(default=False)
    synthetic_count = models.PositiveIntegerField(default=0)
    # Curated turns left out because a curator flagged personal data no admin has cleared.
    personal_data_excluded = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]


class EvaluationSet(models.Model):
    """A knowledge base's pinned evaluation set: the held-out part of one snapshot that every
    later candidate is scored on unless a snapshot is named, so figures stay comparable
    across versions."""

    knowledge_base = models.OneToOneField(KnowledgeBase, on_delete=models.CASCADE, related_name="evaluation_set")
    snapshot = models.ForeignKey(DatasetSnapshot, on_delete=models.PROTECT, related_name="+")
    pinned_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    pinned_at = models.DateTimeField(auto_now=True)


class SnapshotExample(models.Model):
    """One turn's final judgment as it stood when the snapshot was taken."""

    class Split(models.TextChoices):
        TRAIN = "train"
        HELDOUT = "heldout"

    snapshot = models.ForeignKey(DatasetSnapshot, on_delete=models.CASCADE, related_name="examples")
    # Kept when the turn is deleted (erasure flags the versions trained on it instead).
    turn = models.ForeignKey(Turn, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    example_id = models.CharField(max_length=100)
    split = models.CharField(max_length=10, choices=Split.choices)
    # The self-contained query retrieval used (a curator's corrected query, else the turn's
    # rewrite of a follow-up, else its question): retrievers train and are scored on it, and
    # the split is keyed on it.
    query = models.TextField()
    # The question as the user asked it, when it differs from `query` (blank: the same), and
    # the conversation's messages before it as the turn stored them ([{"role", "content"}],
    # a system message first if the app sent one): what the generator was given.
    question = models.TextField(blank=True, default="")
    history = models.JSONField(default=list, blank=True)
    gold_answer = models.TextField(blank=True)
    answer_rating = models.CharField(max_length=20, blank=True)
    rationale = models.TextField(blank=True)
    # Lists of {"text", "document_id", "chunk_id", "title"} (rag.datasets.LabeledPassage).
    relevant = models.JSONField(default=list)
    irrelevant = models.JSONField(default=list)
    # Passages judged "partly" relevant: neither positive nor negative for a retriever, a 0.5
    # target for the reranker. Empty in snapshots made before it was kept.
    partly = models.JSONField(default=list, blank=True, db_default=[])
    retrieved = models.JSONField(default=list)
    label_ids = models.JSONField(default=list)
    # Slugs of the turn's failure tags in its final judgment ("retrieval-miss", ...): the
    # trainers repeat such examples (training.services.runs.inputs, docs/failure-tags.md).
    failure_tags = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["pk"]
        constraints = [models.UniqueConstraint(fields=["snapshot", "example_id"], name="example_unique_per_snapshot")]


class ModelVersion(models.Model):
    """A retriever, generator or reranker version: what it was trained on, where its files are, how it scored.

    A reranker version serves from its artifact folder (a cross-encoder save) alone."""

    class Status(models.TextChoices):
        CANDIDATE = "candidate"
        LIVE = "live"
        RETIRED = "retired"
        FAILED = "failed"
        # Refused by a retraining policy's gate; it never went live.
        REJECTED = "rejected"

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="model_versions")
    component = models.CharField(max_length=20, choices=Component.choices)
    name = models.CharField(max_length=100)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    snapshot = models.ForeignKey(DatasetSnapshot, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    training_run = models.OneToOneField(
        "TrainingRun", null=True, blank=True, on_delete=models.SET_NULL, related_name="model_version"
    )
    mode = models.CharField(max_length=40, blank=True)
    parameters = models.JSONField(default=dict)
    code_revision = models.CharField(max_length=64, blank=True)
    # Relative to RAGLOOP_ARTIFACTS_DIR; holds MANIFEST.json (checksums), written last.
    artifact_path = models.CharField(max_length=500, blank=True)
    artifact_checksum = models.CharField(max_length=64, blank=True)
    # Retriever: the space holding its document vectors (its own in full mode, the parent's
    # in query-only mode) and the folder of its query encoder.
    embedding_space = models.ForeignKey(EmbeddingSpace, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    query_model_reference = models.CharField(max_length=500, blank=True)
    # Generator: the backend and model it serves with (hf base path + adapter, or an OpenAI model).
    generator_backend = models.CharField(max_length=20, blank=True)
    generator_model = models.CharField(max_length=500, blank=True)
    generator_adapter_path = models.CharField(max_length=500, blank=True)
    metrics = models.JSONField(default=dict)
    training_curve = models.JSONField(default=list)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.CANDIDATE)
    # Why it has that status, where someone said: e.g. the gate's reason for rejecting it.
    status_reason = models.TextField(blank=True)
    # Set when a person's data this version was trained on was erased (training.services.erasure):
    # its snapshot held an erased example, or an ancestor's did. The receipt is the first erasure
    # that flagged it; the retraining policy's erased-data rule counts from its time.
    trained_on_erased_data = models.BooleanField(default=False)
    erasure_receipt = models.ForeignKey(
        "ErasureReceipt", null=True, blank=True, on_delete=models.SET_NULL, related_name="flagged_versions"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["knowledge_base", "name"], name="model_version_name_unique_per_kb"),
            models.UniqueConstraint(
                fields=["knowledge_base", "component"], condition=Q(status="live"), name="one_live_version_per_component"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class TrainingRun(models.Model):
    """One training of a component; the Celery task only moves this row."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="training_runs")
    component = models.CharField(max_length=20, choices=Component.choices)
    mode = models.CharField(max_length=40)
    snapshot = models.ForeignKey(DatasetSnapshot, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    parameters = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    progress = models.FloatField(default=0.0)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    cancel_requested = models.BooleanField(default=False)
    # What a run keeps on a remote service, written as soon as it exists, so an execution after
    # a dead worker follows the same remote job instead of paying for a second one: for an
    # OpenAI run {"base_url", "training_file", "job_id"} plus "reattached", the times it resumed.
    remote_state = models.JSONField(default=dict, blank=True)
    # Times the run was queued again to go on from its last checkpoint after its worker died
    # (bounded by RAGLOOP_TRAINING_RESUME_LIMIT).
    resumes = models.PositiveSmallIntegerField(default=0, db_default=0)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.SUCCEEDED, self.Status.FAILED, self.Status.CANCELLED}


class Evaluation(models.Model):
    """A candidate and the version live at the time, scored on the same held-out examples."""

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="evaluations")
    component = models.CharField(max_length=20, choices=Component.choices)
    snapshot = models.ForeignKey(DatasetSnapshot, on_delete=models.CASCADE, related_name="evaluations")
    candidate = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="evaluations")
    # None: the baseline was the base model (no version had been promoted yet).
    baseline = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    baseline_name = models.CharField(max_length=100)
    candidate_metrics = models.JSONField(default=dict)
    baseline_metrics = models.JSONField(default=dict)
    # Per metric: the mean per-query change with its paired bootstrap 95% interval
    # ({"delta", "low", "high", "queries"}; rag.metrics.paired_bootstrap_interval, seed 0).
    delta_intervals = models.JSONField(default=dict)
    # Held-out examples left out because a version in the candidate's lineage trained on their
    # query (an older snapshot, or one made with another held-out share, can overlap).
    heldout_left_out = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]


class EvaluationQueryResult(models.Model):
    """Per-query figures, so the review page can show which queries improved or regressed."""

    evaluation = models.ForeignKey(Evaluation, on_delete=models.CASCADE, related_name="query_results")
    example = models.ForeignKey(SnapshotExample, on_delete=models.CASCADE, related_name="+")
    candidate = models.JSONField(default=dict)
    baseline = models.JSONField(default=dict)
    # The headline metric's change (nDCG@10 for retrievers, token F1 for generators).
    delta = models.FloatField(default=0.0)

    class Meta:
        ordering = ["delta", "pk"]


class PromotionEvent(models.Model):
    """Append-only audit of which version went live when, by whom and why."""

    class Action(models.TextChoices):
        PROMOTE = "promote"
        ROLLBACK = "rollback"
        AUTO_PROMOTE = "auto_promote"

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="promotion_events")
    component = models.CharField(max_length=20, choices=Component.choices)
    action = models.CharField(max_length=20, choices=Action.choices)
    from_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    to_version = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # Who acted when no person did, e.g. "policy nightly-retriever" for an automatic promotion.
    actor_name = models.CharField(max_length=150, blank=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]


class EvaluationJob(models.Model):
    """One evaluation of a candidate as a job: queued, running, then an Evaluation or an error."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="evaluation_jobs")
    candidate = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="evaluation_jobs")
    # None: the pinned evaluation set, else the candidate's own snapshot.
    snapshot = models.ForeignKey(DatasetSnapshot, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True)
    evaluation = models.OneToOneField(Evaluation, null=True, blank=True, on_delete=models.SET_NULL, related_name="job")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.SUCCEEDED, self.Status.FAILED}


class ErasureReceipt(models.Model):
    """That an erasure happened (training.services.erasure): which selector, how many rows of each
    kind were deleted, which model versions it flagged, by whom and when. Never the erased
    content; an end-user reference is kept only as a keyed digest (docs/erasure.md)."""

    class Selector(models.TextChoices):
        END_USER = "end_user", "end-user reference"
        CONVERSATION = "conversation", "conversation"
        TURN = "turn", "turn"
        DOCUMENT = "document", "document"

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="erasure_receipts")
    selector = models.CharField(max_length=20, choices=Selector.choices)
    # The conversation's or document's external id, the turn id; for an end user "hmac:<digest>".
    selector_value = models.CharField(max_length=600)
    # {"<app>.<Model>": rows deleted}, e.g. {"knowledge.Turn": 3, "curation.Label": 2}.
    counts = models.JSONField(default=dict)
    # Names of the model versions flagged trained_on_erased_data by this erasure.
    flagged_version_names = models.JSONField(default=list)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor_name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self) -> str:
        return f"erasure #{self.pk} ({self.get_selector_display()})"

    @property
    def rows_deleted(self) -> int:
        return sum(self.counts.values())


class ErasedDataAction(models.TextChoices):
    """What a retraining policy does when its component's live version is flagged as trained on
    erased data."""

    NEXT_CYCLE = "next_cycle", "retrain at the next check"
    DEADLINE = "deadline", "replace before a deadline"


class RetrainingPolicy(models.Model):
    """When a component of a knowledge base is retrained by itself, how, and what may go live.

    Triggers: a cron schedule in a time zone, and/or at least `min_new_labels` final labels
    since the last cycle's snapshot. Gate: the primary metric must beat live by `gate_margin`
    with the lower bound of its bootstrap interval above zero, no guard metric may drop by more
    than its tolerance, and the held-out set must have at least `gate_min_queries` queries.
    """

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="retraining_policies")
    component = models.CharField(max_length=20, choices=Component.choices)
    name = models.CharField(max_length=100)
    enabled = models.BooleanField(default=True)
    mode = models.CharField(max_length=40)
    parameters = models.JSONField(default=dict, blank=True)
    # Five-field cron expression ("0 3 * * *"); blank: no schedule.
    schedule = models.CharField(max_length=100, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    # None: no label-count trigger.
    min_new_labels = models.PositiveIntegerField(null=True, blank=True)
    gate_metric = models.CharField(max_length=40)
    gate_margin = models.FloatField(default=0.0)
    # {metric: largest allowed drop}, e.g. {"recall@10": 0.02}.
    gate_guards = models.JSONField(default=dict, blank=True)
    gate_min_queries = models.PositiveIntegerField(default=20)
    auto_promote = models.BooleanField(default=False)
    # Whether the cycle's snapshot takes the labels of synthetic turns (LLM-written questions;
    # knowledge.models.Turn.Source.SYNTHETIC) too: off, only questions people asked count.
    include_synthetic = models.BooleanField(default=False)
    # A flagged live version (trained on erased data): retrained at the policy's next check,
    # whatever the label threshold says, or replaced by a cycle that starts by the deadline
    # (the erasure's time plus `erased_data_deadline_days`); training.services.loop.
    erased_data_action = models.CharField(
        max_length=20, choices=ErasedDataAction.choices, default=ErasedDataAction.NEXT_CYCLE,
        db_default=ErasedDataAction.NEXT_CYCLE,
    )  # fmt: skip
    erased_data_deadline_days = models.PositiveIntegerField(default=30, db_default=30)
    # The last schedule time a cycle was started for (the next is computed after it).
    schedule_fired_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["knowledge_base_id", "component"]
        verbose_name_plural = "retraining policies"
        constraints = [
            models.UniqueConstraint(fields=["knowledge_base", "component"], name="one_policy_per_component"),
            models.UniqueConstraint(fields=["knowledge_base", "name"], name="policy_name_unique_per_kb"),
        ]

    def __str__(self) -> str:
        return self.name


class LoopCycle(models.Model):
    """One triggered retraining: snapshot -> train -> embed -> evaluate -> gate -> promote or review.

    Each stage is idempotent: `training.services.loop.loop_cycle_advance` looks at what the cycle
    already has (its snapshot, run, candidate, evaluation job) and does only the next step.
    """

    class Trigger(models.TextChoices):
        SCHEDULE = "schedule"
        LABELS = "labels", "new labels"
        MANUAL = "manual", "run now"
        ERASURE = "erasure", "erased data in the live version"

    class Stage(models.TextChoices):
        SNAPSHOT = "snapshot"
        TRAIN = "train"
        EMBED = "embed"
        EVALUATE = "evaluate"
        GATE = "gate"
        DONE = "done"

    class Status(models.TextChoices):
        RUNNING = "running"
        PROMOTED = "promoted"
        AWAITING_REVIEW = "awaiting_review", "awaiting review"
        REFUSED = "refused", "refused by the gate"
        FAILED = "failed"

    policy = models.ForeignKey(RetrainingPolicy, on_delete=models.CASCADE, related_name="cycles")
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="loop_cycles")
    component = models.CharField(max_length=20, choices=Component.choices)
    trigger = models.CharField(max_length=20, choices=Trigger.choices)
    triggered_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    stage = models.CharField(max_length=20, choices=Stage.choices, default=Stage.SNAPSHOT)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.RUNNING)
    snapshot = models.ForeignKey(DatasetSnapshot, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    training_run = models.ForeignKey(TrainingRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # Training attempts: a run whose worker died is retried on the same snapshot (bounded).
    training_attempts = models.PositiveIntegerField(default=0)
    candidate = models.ForeignKey(ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    evaluation_job = models.ForeignKey(EvaluationJob, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # {"passed", "reasons", "metric", "delta", "low", "high", "queries", "guards"}: what decided it.
    gate_outcome = models.JSONField(default=dict, blank=True)
    labels_at_start = models.PositiveIntegerField(default=0)
    # {stage: seconds spent in it}.
    stage_seconds = models.JSONField(default=dict, blank=True)
    log = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    stage_started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["policy"], condition=Q(status="running"), name="one_running_cycle_per_policy"),
        ]

    @property
    def is_finished(self) -> bool:
        return self.status != self.Status.RUNNING


class WebhookEndpoint(models.Model):
    """Where a knowledge base's loop events are posted, signed as Standard Webhooks specifies."""

    class Event(models.TextChoices):
        CYCLE_FINISHED = "cycle.finished"
        CANDIDATE_AWAITING_REVIEW = "candidate.awaiting_review"
        VERSION_PROMOTED = "version.promoted"
        VERSION_ROLLED_BACK = "version.rolled_back"
        RUN_FAILED = "run.failed"
        GATE_REFUSED = "gate.refused"

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=1000)
    # "whsec_" + base64 of the key bytes, as the Standard Webhooks libraries take it.
    secret = models.CharField(max_length=200)
    # Event types it receives; empty: all of them.
    events = models.JSONField(default=list, blank=True)
    enabled = models.BooleanField(default=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["pk"]

    def __str__(self) -> str:
        return self.url


class WebhookMessage(models.Model):
    """One event for one endpoint; delivered by a Celery task with retries and backoff."""

    class Status(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        FAILED = "failed"  # gave up after the last retry

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="messages")
    # The `webhook-id` header: the same on every attempt, so a receiver can drop duplicates.
    message_id = models.CharField(max_length=64, unique=True)
    event = models.CharField(max_length=40)
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    attempt_count = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]


class WebhookAttempt(models.Model):
    """One try at delivering a message: what the receiver answered, or why it could not."""

    message = models.ForeignKey(WebhookMessage, on_delete=models.CASCADE, related_name="attempts")
    status_code = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    # When the next try is due (None: delivered, or no tries left).
    next_retry_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
