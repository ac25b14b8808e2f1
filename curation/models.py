"""Knowledge bases and what they hold (documents, chunks, embeddings), served and ingested turns
with their retrieved passages, embedding jobs, and API tokens."""

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector
from django.db import models
from django.db.models import Q
from django.utils import timezone
from pgvector.django import VectorField


class KnowledgeBase(models.Model):
    class GeneratorBackend(models.TextChoices):
        EXTRACTIVE = "extractive", "Extractive (offline)"
        OPENAI = "openai", "OpenAI-compatible endpoint"
        HF = "hf", "Local Hugging Face model"

    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    chunk_max_tokens = models.PositiveIntegerField(default=200)
    chunk_overlap_tokens = models.PositiveIntegerField(default=40)
    generator_backend = models.CharField(
        max_length=20, choices=GeneratorBackend.choices, default=GeneratorBackend.EXTRACTIVE
    )
    # The OpenAI model name, or the path of a local Hugging Face model.
    generator_model = models.CharField(max_length=500, blank=True)
    # The embedding space of the live retriever version; serving reads only this one.
    live_space = models.ForeignKey(
        "EmbeddingSpace", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Curation: how many curators judge each turn (overlap), how long "next" holds a turn,
    # and the guidelines (Markdown) curators read while judging.
    labels_per_turn = models.PositiveSmallIntegerField(default=1)
    hold_minutes = models.PositiveSmallIntegerField(default=15)
    guidelines = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    @property
    def generator_version(self) -> str:
        return f"{self.generator_backend}:{self.generator_model}" if self.generator_model else self.generator_backend


class Document(models.Model):
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="documents")
    external_id = models.CharField(max_length=512)
    title = models.TextField(blank=True)
    text = models.TextField()
    metadata = models.JSONField(default=dict, blank=True)
    # sha256 of title, text and metadata: re-ingesting an unchanged document is a no-op.
    content_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["knowledge_base", "external_id"], name="document_external_id_unique_per_kb"),
        ]

    def __str__(self) -> str:
        return self.external_id


class Chunk(models.Model):
    document = models.ForeignKey(Document, on_delete=models.CASCADE, related_name="chunks")
    # Denormalised from the document so retrieval and counts filter on one table.
    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="chunks")
    order = models.PositiveIntegerField()
    text = models.TextField()
    token_count = models.PositiveIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["document", "order"], name="chunk_order_unique_per_document")]
        indexes = [
            # Keyword search in the workbench (curation.services.search) queries exactly this
            # expression, so the planner can use the index.
            GinIndex(SearchVector("text", config="english"), name="chunk_text_search"),
        ]


class EmbeddingSpace(models.Model):
    """The chunk vectors of one retriever version: a new document encoder needs a new space."""

    class Status(models.TextChoices):
        BUILDING = "building"
        READY = "ready"
        RETIRED = "retired"

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="embedding_spaces")
    retriever_version = models.CharField(max_length=100)
    # "base:all-MiniLM-L6-v2" for the packaged base model, else a path to a model folder.
    model_reference = models.CharField(max_length=500)
    dimensions = models.PositiveIntegerField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.BUILDING)
    # True once the space's partial HNSW index exists (see curation.services.embeddings).
    hnsw_index_built = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["knowledge_base", "retriever_version"], name="space_retriever_version_unique_per_kb"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.knowledge_base.slug}/{self.retriever_version}"

    @property
    def hnsw_index_name(self) -> str:
        return f"chunk_embedding_hnsw_space_{self.pk}"


class ChunkEmbedding(models.Model):
    chunk = models.ForeignKey(Chunk, on_delete=models.CASCADE, related_name="embeddings")
    space = models.ForeignKey(EmbeddingSpace, on_delete=models.CASCADE, related_name="embeddings")
    # No fixed dimension: spaces of different models share the table. Each space gets its own
    # partial HNSW index on `embedding::vector(<dims>)` (pgvector's documented way to index
    # vectors of several dimensions in one column).
    embedding = VectorField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["space", "chunk"], name="chunk_embedding_unique_per_space")]


class EmbeddingJob(models.Model):
    """Embedding the chunks of one space that have no vector yet; Celery tasks only move this row."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    space = models.ForeignKey(EmbeddingSpace, on_delete=models.CASCADE, related_name="jobs")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    total_chunks = models.PositiveIntegerField(default=0)
    embedded_chunks = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.SUCCEEDED, self.Status.FAILED}

    @property
    def progress_percent(self) -> int:
        if not self.total_chunks:
            return 100 if self.status == self.Status.SUCCEEDED else 0
        return min(100, int(100 * self.embedded_chunks / self.total_chunks))


class Turn(models.Model):
    """One query and its answer: served by ragloop, or logged by an external RAG app."""

    class Source(models.TextChoices):
        SERVED = "served"
        INGESTED = "ingested"

    class Feedback(models.IntegerChoices):
        THUMBS_DOWN = -1
        THUMBS_UP = 1

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="turns")
    source = models.CharField(max_length=20, choices=Source.choices)
    # The caller's id for this turn; ingesting it again changes nothing.
    external_id = models.CharField(max_length=255, null=True, blank=True)
    query = models.TextField()
    answer = models.TextField(blank=True)
    retriever_version = models.CharField(max_length=200, blank=True)
    generator_version = models.CharField(max_length=200, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    feedback = models.SmallIntegerField(choices=Feedback.choices, null=True, blank=True)
    feedback_comment = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    # A default, not auto_now_add: turns logged by an external app keep the time they give.
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Curation queue (see curation.services.queue): tier 0 = negative feedback, 1 = low
    # retrieval confidence, 2 = the rest; within a tier, ascending `queue_order`.
    queue_tier = models.PositiveSmallIntegerField(default=2)
    queue_order = models.FloatField(default=0.0)
    # Submitted (non-skip) labels, kept in step by the label services; `needs_labels` is
    # label_count < the KB's labels_per_turn, so the queue reads one partial index.
    label_count = models.PositiveSmallIntegerField(default=0)
    needs_labels = models.BooleanField(default=True)
    # Two or more submitted labels that disagree, and no adjudication yet.
    disputed = models.BooleanField(default=False)
    imported = models.BooleanField(default=False, help_text="Created by a label import, with no model answer.")

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(
                fields=["knowledge_base", "queue_tier", "queue_order", "id"],
                condition=Q(needs_labels=True),
                name="turn_queue_open",
            ),
            # The queue page lists turns of every status in queue order, and pages deep into
            # them: the columns its filters read are included, so even a filtered page is
            # picked by an index-only walk instead of a sort of all the turns.
            models.Index(
                fields=["knowledge_base", "queue_tier", "queue_order", "id"],
                include=["label_count", "disputed", "feedback", "created_at"],
                name="turn_queue_all",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["knowledge_base", "external_id"],
                condition=Q(external_id__isnull=False),
                name="turn_external_id_unique_per_kb",
            ),
        ]


class RetrievedPassage(models.Model):
    """A passage as the turn saw it: its text is copied so labels stay valid if documents change."""

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="passages")
    rank = models.PositiveIntegerField()
    score = models.FloatField(null=True, blank=True)
    chunk = models.ForeignKey(Chunk, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    document = models.ForeignKey(Document, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    # The document external id for served turns; the external app's source id for ingested ones.
    source_id = models.CharField(max_length=512, blank=True)
    title = models.TextField(blank=True)
    text = models.TextField()

    class Meta:
        ordering = ["rank"]
        constraints = [models.UniqueConstraint(fields=["turn", "rank"], name="passage_rank_unique_per_turn")]


class ApiToken(models.Model):
    """A bearer token for the REST API. Only its sha256 is stored; the token is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_prefix = models.CharField(max_length=12)
    key_hash = models.CharField(max_length=64, unique=True)
    all_knowledge_bases = models.BooleanField(default=False)
    knowledge_bases = models.ManyToManyField(KnowledgeBase, blank=True, related_name="api_tokens")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"


# --- curation: membership, queue holds, labels, drafts, history, adjudication -------------


class Membership(models.Model):
    """A curator's access to one knowledge base (admins see every knowledge base)."""

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["knowledge_base", "user"], name="membership_unique")]


class Invitation(models.Model):
    """Sign-up is by invitation: an admin invites, the invitee sets a username and password."""

    class Role(models.TextChoices):
        CURATOR = "curator"
        ADMIN = "admin"

    email = models.EmailField()
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.CURATOR)
    knowledge_bases = models.ManyToManyField(KnowledgeBase, blank=True, related_name="+")
    key_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    accepted_at = models.DateTimeField(null=True, blank=True)


class TurnHold(models.Model):
    """A turn handed to a curator by "next", reserved for them until `expires_at`."""

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="holds")
    curator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="turn_holds")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["turn", "curator"], name="hold_unique_per_curator")]


class Relevance(models.TextChoices):
    RELEVANT = "relevant"
    PARTLY = "partly"
    NOT_RELEVANT = "not_relevant"


class AnswerRating(models.TextChoices):
    CORRECT = "correct"
    PARTLY = "partly"
    WRONG = "wrong"


class Label(models.Model):
    """One curator's judgment of one turn. Every change is kept in LabelRevision."""

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="labels")
    curator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="labels")
    answer_rating = models.CharField(max_length=20, choices=AnswerRating.choices, blank=True)
    gold_answer = models.TextField(blank=True)
    rationale = models.TextField(blank=True, help_text="A short quote of the passage that supports the answer.")
    has_personal_data = models.BooleanField(default=False)
    comment = models.TextField(blank=True)
    skipped = models.BooleanField(default=False)
    skip_reason = models.CharField(max_length=500, blank=True)
    imported = models.BooleanField(default=False)
    # Incremented on every submit; a draft records the version it started from.
    version = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["turn", "curator"], name="label_unique_per_curator")]


class PassageJudgment(models.Model):
    """The relevance of one passage in a label: a retrieved one, or one the curator attached."""

    label = models.ForeignKey(Label, on_delete=models.CASCADE, related_name="passage_judgments")
    retrieved_passage = models.ForeignKey(
        RetrievedPassage, null=True, blank=True, on_delete=models.CASCADE, related_name="judgments"
    )
    # Set for a passage the curator found by search and attached (the retriever missed it).
    chunk = models.ForeignKey(Chunk, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    document = models.ForeignKey(Document, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    attached = models.BooleanField(default=False)
    text = models.TextField(blank=True, help_text="The attached passage's text as the curator saw it.")
    relevance = models.CharField(max_length=20, choices=Relevance.choices)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["label", "retrieved_passage"],
                condition=Q(retrieved_passage__isnull=False),
                name="judgment_unique_per_passage",
            ),
            models.UniqueConstraint(
                fields=["label", "chunk"], condition=Q(chunk__isnull=False, attached=True), name="attached_chunk_unique"
            ),
        ]


class LabelRevision(models.Model):
    """Append-only history of a label: who changed it, when, and its state before and after."""

    label = models.ForeignKey(Label, on_delete=models.CASCADE, related_name="revisions")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField()

    class Meta:
        ordering = ["created_at", "pk"]


class LabelDraft(models.Model):
    """Work in progress on a label, saved as the curator types; never overwrites a newer label."""

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="drafts")
    curator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="label_drafts")
    payload = models.JSONField()
    # The label version this draft started from (0: there was no label yet).
    base_version = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["turn", "curator"], name="draft_unique_per_curator")]


class Adjudication(models.Model):
    """An admin's final judgment of a turn whose curators disagreed; it wins over their labels."""

    turn = models.OneToOneField(Turn, on_delete=models.CASCADE, related_name="adjudication")
    admin = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    answer_rating = models.CharField(max_length=20, choices=AnswerRating.choices, blank=True)
    gold_answer = models.TextField(blank=True)
    # {"<retrieved passage id>": "relevant" | "partly" | "not_relevant"}
    passage_relevance = models.JSONField(default=dict)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
