"""Knowledge bases and what they hold (documents, chunks, embeddings), served and ingested turns
with their retrieved passages, embedding jobs, and API tokens.

The tables keep the names they had when these models lived in the curation app
(`Meta.db_table`): moving the models changed no data, and raw SQL and the per-space HNSW
index names stayed valid (see migrations/0001_models_from_curation.py).
"""

from django.conf import settings
from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVector, SearchVectorField
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models
from django.db.models import Q
from django.utils import timezone
from pgvector.django import VectorField


class RetrievalMode(models.TextChoices):
    """How a knowledge base retrieves (docs/retrieval.md): its live embedding space, BM25 over the
    chunk text in PostgreSQL, or both fused."""

    DENSE = "dense", "Dense (the live embedding space)"
    LEXICAL = "lexical", "Lexical (BM25 in PostgreSQL)"
    HYBRID = "hybrid", "Hybrid (dense and lexical, fused)"


class PersonalDataMode(models.TextChoices):
    OFF = "off", "Off: store as sent"
    REDACT = "redact", "Redact: replace with placeholders such as <EMAIL>"
    REJECT = "reject", "Reject: refuse what contains personal data"


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
    # What /ask and /retrieve use unless a request names a mode (knowledge.selectors.passages_search).
    # db_default too: rows written by code that predates the column (an older process during a
    # rolling deploy, a migration test) get dense rather than a NOT NULL error.
    retrieval_mode = models.CharField(
        max_length=10, choices=RetrievalMode.choices, default=RetrievalMode.DENSE, db_default=RetrievalMode.DENSE
    )
    # What serves now. Promotion and rollback (training.services.versions) write these in the
    # transaction that changes the live model version, so serving reads this row alone.
    # Retriever: the live space (the base space until a version is promoted), the live version's
    # name and its query encoder (blank: the base retriever, encoding with the space's model).
    live_space = models.ForeignKey(
        "EmbeddingSpace", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    live_retriever_version = models.CharField(max_length=100, blank=True)
    live_query_model_reference = models.CharField(max_length=500, blank=True)
    # Generator: the live version's name, backend, model and LoRA adapter (blank name: the
    # configured generator_backend and generator_model serve).
    live_generator_version = models.CharField(max_length=100, blank=True)
    live_generator_backend = models.CharField(max_length=20, blank=True)
    live_generator_model = models.CharField(max_length=500, blank=True)
    live_generator_adapter_path = models.CharField(max_length=500, blank=True)
    # Reranker: the live version's name and its cross-encoder folder (relative to the artifacts
    # folder); blank: no reranker, the first stage's order serves (docs/retrieval.md).
    live_reranker_version = models.CharField(max_length=100, blank=True, default="", db_default="")
    live_reranker_path = models.CharField(max_length=500, blank=True, default="", db_default="")
    # How many of the first stage's candidates a live reranker scores (its cost grows with it).
    rerank_top_n = models.PositiveSmallIntegerField(default=50, db_default=50)
    # Curation: how many curators judge each turn (overlap), how long "next" holds a turn,
    # and the guidelines (Markdown) curators read while judging.
    labels_per_turn = models.PositiveSmallIntegerField(default=1)
    hold_minutes = models.PositiveSmallIntegerField(default=15)
    guidelines = models.TextField(blank=True)
    # What happens to personal data (e-mail addresses, phone numbers, cards, IBANs, IP addresses,
    # URLs; rag.personal_data) in the turns, conversations and labels stored for this knowledge
    # base: kept as sent, replaced by typed placeholders, or the request refused (422).
    personal_data_mode = models.CharField(max_length=10, choices=PersonalDataMode.choices, default=PersonalDataMode.OFF, db_default=PersonalDataMode.OFF)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "curation_knowledgebase"
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
        db_table = "curation_document"
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
    # The text's lexemes with their positions, stored (PostgreSQL computes it on every insert and
    # update, so it can never be stale): lexical retrieval reads term frequencies from it for
    # BM25 (knowledge.selectors.passages_retrieve_lexical) instead of parsing each matching
    # chunk again, and the workbench's keyword search filters on it.
    lexical_vector = models.GeneratedField(
        expression=SearchVector("text", config="english"), output_field=SearchVectorField(), db_persist=True
    )

    class Meta:
        db_table = "curation_chunk"
        constraints = [models.UniqueConstraint(fields=["document", "order"], name="chunk_order_unique_per_document")]
        indexes = [
            # The inverted index of lexical retrieval and of the workbench's keyword search.
            GinIndex(fields=["lexical_vector"], name="chunk_text_search"),
            # BM25's collection statistics (chunk count and mean length per knowledge base) by
            # an index-only scan instead of reading every chunk's row.
            models.Index(fields=["knowledge_base"], include=["token_count"], name="chunk_kb_token_count"),
        ]


class InferenceBackend(models.TextChoices):
    """rag.embedding_backends.EMBEDDING_BACKENDS, as a space's setting (tests keep them equal)."""

    TORCH = "torch"
    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"
    OPENVINO = "openvino"
    OPENVINO_INT8 = "openvino-int8"


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
    # What runs the encoder for this space's chunks and queries (rag.embedding_backends):
    # torch, or an ONNX / OpenVINO export, fp32 or int8. Changed only where the vectors stay
    # compatible (knowledge.services.embedding_spaces.embedding_space_backend_set).
    inference_backend = models.CharField(
        max_length=20, choices=InferenceBackend.choices, default=InferenceBackend.TORCH,
        db_default=InferenceBackend.TORCH,
    )  # fmt: skip
    # True once the space's partial HNSW index exists (see knowledge.services.embeddings).
    hnsw_index_built = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Retired: no version can serve from it any more (training decides; see
    # knowledge.services.embedding_spaces). New documents are no longer embedded into it, and
    # after RAGLOOP_RETIRED_SPACE_GRACE_SECONDS its vectors and HNSW index are dropped.
    retired_at = models.DateTimeField(null=True, blank=True)
    vectors_dropped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "curation_embeddingspace"
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

    @property
    def state_label(self) -> str:
        """The status as lists show it: a retired space says whether its vectors are gone."""
        if self.status == self.Status.RETIRED:
            return "retired, vectors dropped" if self.vectors_dropped_at else "retired"
        return self.status


class QueryEncoder(models.Model):
    """A retriever version that reads another version's embedding space with a query encoder of
    its own (query-only training: the stored document vectors stay valid). Training writes one
    when it registers such a version, so serving can answer with it by name."""

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="query_encoders")
    retriever_version = models.CharField(max_length=100)
    space = models.ForeignKey(EmbeddingSpace, on_delete=models.CASCADE, related_name="query_encoders")
    # A folder relative to RAGLOOP_ARTIFACTS_DIR, as EmbeddingSpace.model_reference.
    model_reference = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["knowledge_base", "retriever_version"], name="query_encoder_version_unique_per_kb"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.knowledge_base.slug}/{self.retriever_version}"


class ChunkEmbedding(models.Model):
    chunk = models.ForeignKey(Chunk, on_delete=models.CASCADE, related_name="embeddings")
    space = models.ForeignKey(EmbeddingSpace, on_delete=models.CASCADE, related_name="embeddings")
    # No fixed dimension: spaces of different models share the table. Each space gets its own
    # partial HNSW index on `embedding::vector(<dims>)` (pgvector's documented way to index
    # vectors of several dimensions in one column).
    embedding = VectorField()

    class Meta:
        db_table = "curation_chunkembedding"
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
        db_table = "curation_embeddingjob"
        ordering = ["-created_at"]

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.SUCCEEDED, self.Status.FAILED}

    @property
    def progress_percent(self) -> int:
        if not self.total_chunks:
            return 100 if self.status == self.Status.SUCCEEDED else 0
        return min(100, int(100 * self.embedded_chunks / self.total_chunks))


class Conversation(models.Model):
    """Turns that belong together: a chat session of one end user with a RAG app.

    A turn without a conversation (a one-shot `ask`, a turn logged without a conversation id,
    every turn stored before conversations existed) keeps `Turn.conversation` null; no
    one-turn conversation is made up for it (docs/conversations.md).
    """

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="conversations")
    # The app's id for the conversation; ragloop makes one ("c-<random>") when the app sends none.
    external_id = models.CharField(max_length=255)
    # Who talked, as the app names them (opaque: ragloop never resolves it).
    end_user = models.CharField(max_length=255, blank=True, db_index=True)
    # The system prompt the app sent with the conversation's first turn, if any.
    system_prompt = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    last_activity_at = models.DateTimeField(default=timezone.now)
    turn_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-last_activity_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["knowledge_base", "external_id"], name="conversation_external_id_unique_per_kb"
            ),
        ]
        indexes = [models.Index(fields=["knowledge_base", "-last_activity_at", "-id"], name="conversation_recent")]

    def __str__(self) -> str:
        return self.external_id


class Turn(models.Model):
    """One query and its answer: served by ragloop, or logged by an external RAG app."""

    class Source(models.TextChoices):
        SERVED = "served"
        INGESTED = "ingested"
        # A question an LLM wrote for a chunk (curation.services.synthetic_questions), shown to
        # curators to confirm; training snapshots leave its labels out unless asked.
        SYNTHETIC = "synthetic"

    class Feedback(models.IntegerChoices):
        THUMBS_DOWN = -1
        THUMBS_UP = 1

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="turns")
    source = models.CharField(max_length=20, choices=Source.choices)
    # The caller's id for this turn; ingesting it again changes nothing.
    external_id = models.CharField(max_length=255, null=True, blank=True)
    # The conversation and the turn's place in it (0 = its first question); both null for a
    # turn on its own.
    conversation = models.ForeignKey(
        Conversation, null=True, blank=True, on_delete=models.CASCADE, related_name="turns"
    )
    position = models.PositiveIntegerField(null=True, blank=True)
    # The user's question as asked, and the self-contained version retrieval used when the
    # question was a follow-up (blank: retrieval used `query` itself).
    query = models.TextField()
    rewritten_query = models.TextField(blank=True)
    # The messages that led to the question, as the generator saw them ([{role, content}],
    # the system prompt first if there was one), so the turn can be replayed exactly.
    history = models.JSONField(default=list, blank=True)
    # sha256 (rag.conversation.messages_hash) of the history, the question and the answer: the
    # next request of a client that resends the whole conversation finds it by this.
    continuation_hash = models.CharField(max_length=64, blank=True)
    answer = models.TextField(blank=True)
    retriever_version = models.CharField(max_length=200, blank=True)
    # How a served turn retrieved (RetrievalMode; blank for ingested turns and turns served
    # before modes existed, which were dense). retriever_version names it too ("base+bm25/rrf60").
    retrieval_mode = models.CharField(max_length=10, choices=RetrievalMode.choices, blank=True, default="", db_default="")
    generator_version = models.CharField(max_length=200, blank=True)
    # The reranker version that reordered the first stage's candidates (blank: none was live).
    reranker_version = models.CharField(max_length=100, blank=True, default="", db_default="")
    latency_ms = models.FloatField(null=True, blank=True)
    # Where a served turn's time went, in milliseconds: {"embed", "first_stage", "rerank",
    # "generate"} (rerank 0 when no reranker is live; first_stage excludes the query's
    # encoding). Empty for ingested turns and turns served before it was recorded.
    latency_split = models.JSONField(default=dict, blank=True, db_default={})
    feedback = models.SmallIntegerField(choices=Feedback.choices, null=True, blank=True)
    feedback_comment = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    # A default, not auto_now_add: turns logged by an external app keep the time they give.
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # The turn's place in the curation queue, set when it is stored (rag.queue_priority): tier
    # 0 = negative feedback, 1 = low retrieval confidence, 2 = the rest; within a tier,
    # ascending `queue_order`. The curation fields below are written by curation's services;
    # they sit on the turn so the queue (curation.services.queue) reads one partial index.
    queue_tier = models.PositiveSmallIntegerField(default=2)
    queue_order = models.FloatField(default=0.0)
    # Why the turn is there, when re-scoring placed it (rag.queue_priority REASON_*: "candidate",
    # "margin", "agents"; blank: placed at ingest or in the random tier) with the figure behind
    # it (the RBO, the margin, the agreement), so the queue page shows it without a query; and
    # the versions it was re-scored with ("<live>|<candidate>"), so a re-scoring run skips the
    # turns already placed by the same models (training.services.queue_rescoring).
    queue_reason = models.CharField(max_length=16, blank=True, default="")
    queue_reason_value = models.FloatField(null=True, blank=True)
    queue_scored_with = models.CharField(max_length=401, blank=True, default="")
    # Submitted (non-skip) labels, kept in step by the label services; `needs_labels` is
    # label_count < the KB's labels_per_turn, so the queue reads one partial index.
    label_count = models.PositiveSmallIntegerField(default=0)
    needs_labels = models.BooleanField(default=True)
    # Two or more submitted labels that disagree, and no adjudication yet.
    disputed = models.BooleanField(default=False)
    imported = models.BooleanField(default=False, help_text="Created by a label import, with no model answer.")

    class Meta:
        db_table = "curation_turn"
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
            models.Index(
                fields=["knowledge_base", "continuation_hash"],
                condition=~Q(continuation_hash=""),
                name="turn_continuation",
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["knowledge_base", "external_id"],
                condition=Q(external_id__isnull=False),
                name="turn_external_id_unique_per_kb",
            ),
            models.UniqueConstraint(
                fields=["conversation", "position"],
                condition=Q(conversation__isnull=False),
                name="turn_position_unique_per_conversation",
            ),
            models.CheckConstraint(
                condition=Q(conversation__isnull=True, position__isnull=True)
                | Q(conversation__isnull=False, position__isnull=False),
                name="turn_position_with_conversation",
            ),
        ]

    @property
    def retrieval_query(self) -> str:
        """The query retrieval used: the rewrite of a follow-up, else the question itself."""
        return self.rewritten_query or self.query


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
        db_table = "curation_retrievedpassage"
        ordering = ["rank"]
        constraints = [models.UniqueConstraint(fields=["turn", "rank"], name="passage_rank_unique_per_turn")]


def default_token_scopes() -> list[str]:
    return ["read", "ask", "ingest"]


class ApiToken(models.Model):
    """A bearer token for the REST API. Only its sha256 is stored; the token is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_prefix = models.CharField(max_length=12)
    key_hash = models.CharField(max_length=64, unique=True)
    all_knowledge_bases = models.BooleanField(default=False)
    # What the token may do (knowledge.services.tokens.SCOPES): "read", "ask", "ingest",
    # "admin". Within them, its user's current rights apply on every request.
    # Tokens made before scopes existed keep what they could do (default_token_scopes).
    scopes = models.JSONField(default=default_token_scopes)
    knowledge_bases = models.ManyToManyField(
        KnowledgeBase, blank=True, related_name="api_tokens", db_table="curation_apitoken_knowledge_bases"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Written at most once a minute (knowledge.services.tokens.api_token_authenticate).
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # Null: the token does not expire. From this moment on it is refused (401).
    expires_at = models.DateTimeField(null=True, blank=True)
    # The token this one replaced by rotation (its secret was revoked then).
    rotated_from = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")

    class Meta:
        db_table = "curation_apitoken"

    def __str__(self) -> str:
        return f"{self.name} ({self.key_prefix}…)"




class AuditEvent(models.Model):
    """One thing someone did that changes what ragloop holds or serves, or takes data out of it
    (knowledge.services.audit.audit_record writes it in the transaction of the change).

    Append-only: a trigger (migrations/0009_audit_event_and_token_expiry.py) refuses UPDATE and DELETE. So no
    foreign key here may cascade or set null: the knowledge base and the user are kept as ids
    without a database constraint (and as a name, readable after they are deleted).
    """

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    # Who: a username, "cli:<os user>" for management commands, "token:<prefix>" for an API
    # token, or a name such as "policy nightly-retriever" or "system".
    actor = models.CharField(max_length=200)
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    # What: "<object>.<verb>", e.g. "label.submit", "model_version.promote" (docs/audit-log.md).
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64, blank=True)
    knowledge_base = models.ForeignKey(
        KnowledgeBase, null=True, blank=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    knowledge_base_slug = models.CharField(max_length=64, blank=True)
    # A short summary of the object before and after (never secrets, never whole texts).
    before = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    after = models.JSONField(null=True, blank=True, encoder=DjangoJSONEncoder)
    request_id = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["knowledge_base", "-created_at"], name="audit_event_kb_recent")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.object_type}:{self.object_id}"
