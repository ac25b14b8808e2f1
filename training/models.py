"""Dataset snapshots of curated labels, training runs, model versions with lineage, evaluations
of a candidate against the live version, and the append-only log of promotions."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from knowledge.models import EmbeddingSpace, KnowledgeBase, Turn


class Component(models.TextChoices):
    RETRIEVER = "retriever"
    GENERATOR = "generator"


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
    query = models.TextField()
    gold_answer = models.TextField(blank=True)
    answer_rating = models.CharField(max_length=20, blank=True)
    rationale = models.TextField(blank=True)
    # Lists of {"text", "document_id", "chunk_id", "title"} (rag.datasets.LabeledPassage).
    relevant = models.JSONField(default=list)
    irrelevant = models.JSONField(default=list)
    retrieved = models.JSONField(default=list)
    label_ids = models.JSONField(default=list)

    class Meta:
        ordering = ["pk"]
        constraints = [models.UniqueConstraint(fields=["snapshot", "example_id"], name="example_unique_per_snapshot")]


class ModelVersion(models.Model):
    """A retriever or generator version: what it was trained on, where its files are, how it scored."""

    class Status(models.TextChoices):
        CANDIDATE = "candidate"
        LIVE = "live"
        RETIRED = "retired"
        FAILED = "failed"

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
    # Set when a person's data this version was trained on was erased.
    trained_on_erased_data = models.BooleanField(default=False)
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
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
