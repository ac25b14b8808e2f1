"""Curation: curators' membership of knowledge bases, invitations, queue holds, labels with
their passage judgments and failure tags, drafts and append-only history, and admins'
adjudications."""

from django.conf import settings
from django.db import models
from django.db.models import Q

from knowledge.models import Chunk, Document, KnowledgeBase, RetrievedPassage, Turn


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
    # Set when an admin revoked the invitation before it was used (curation.services.accounts).
    revoked_at = models.DateTimeField(null=True, blank=True)


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


# The failure tags every knowledge base starts with (slug, name), in picker order. Slugs never
# change (training reads them, exports carry them); admins may rename, retire or add tags.
RETRIEVAL_MISS = "retrieval-miss"
WRONG_PASSAGE_FIRST = "wrong-passage-first"
ANSWER_NOT_GROUNDED = "answer-not-grounded"
ANSWER_INCOMPLETE = "answer-incomplete"
STALE_DOCUMENT = "stale-document"
OUT_OF_SCOPE = "out-of-scope"
DEFAULT_FAILURE_TAGS = [
    (RETRIEVAL_MISS, "Retrieval miss"),
    (WRONG_PASSAGE_FIRST, "Wrong passage ranked first"),
    (ANSWER_NOT_GROUNDED, "Answer not grounded"),
    (ANSWER_INCOMPLETE, "Answer incomplete"),
    (STALE_DOCUMENT, "Stale document"),
    (OUT_OF_SCOPE, "Out of scope"),
]


class FailureTag(models.Model):
    """A kind of failure a curator can put on a turn ("retrieval miss"), one set per knowledge
    base. A retired tag is no longer offered but stays on the labels that carry it."""

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="failure_tags")
    slug = models.SlugField(max_length=50)
    name = models.CharField(max_length=100)
    position = models.PositiveSmallIntegerField(default=0)
    retired_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["position", "pk"]
        constraints = [models.UniqueConstraint(fields=["knowledge_base", "slug"], name="failure_tag_unique_slug")]

    def __str__(self) -> str:
        return self.name

    @property
    def retired(self) -> bool:
        return self.retired_at is not None


class Label(models.Model):
    """One curator's judgment of one turn. Every change is kept in LabelRevision."""

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="labels")
    curator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="labels")
    answer_rating = models.CharField(max_length=20, choices=AnswerRating.choices, blank=True)
    gold_answer = models.TextField(blank=True)
    rationale = models.TextField(blank=True, help_text="A short quote of the passage that supports the answer.")
    # The curator's flag: the turn holds personal data. A flagged turn stays out of training
    # snapshots until an admin clears the flag (curation.services.personal_data); the flag itself
    # stays, so the label still says what the curator saw.
    has_personal_data = models.BooleanField(default=False)
    personal_data_cleared_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    personal_data_cleared_at = models.DateTimeField(null=True, blank=True)
    # For a follow-up question that retrieval saw rewritten (Turn.rewritten_query): the
    # curator says the rewrite missed what the user meant, and may write a better one.
    rewrite_wrong = models.BooleanField(default=False)
    corrected_query = models.TextField(blank=True)
    comment = models.TextField(blank=True)
    skipped = models.BooleanField(default=False)
    skip_reason = models.CharField(max_length=500, blank=True)
    imported = models.BooleanField(default=False)
    # The answer-rating suggestion the judging page pre-selected, and whether the curator's
    # final rating is the suggested one (null: no suggestion was shown).
    answer_suggestion = models.ForeignKey(
        "Suggestion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    answer_suggestion_matched = models.BooleanField(null=True, blank=True)
    # Tags of the knowledge base's own set (checked by label_submit).
    failure_tags = models.ManyToManyField(FailureTag, blank=True, related_name="labels")
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
    # The suggestion the judging page pre-selected for this passage, and whether the curator's
    # final relevance is the suggested one (null: no suggestion was shown).
    suggestion = models.ForeignKey("Suggestion", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    suggestion_matched = models.BooleanField(null=True, blank=True)

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
    # The admin's final word on the turn's failure tags; wins over the curators' as the rest does.
    failure_tags = models.ManyToManyField(FailureTag, blank=True, related_name="adjudications")
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)


class Suggestion(models.Model):
    """An agent's proposed judgment of a turn, shown pre-selected on the judging page: a retrieved
    passage's relevance (`retrieved_passage` set) or the answer's rating (`retrieved_passage`
    null). `agent` names the agent and its version: "retriever:<version>",
    "reranker:<version>", "llm-judge:<model>" (rag.suggestions)."""

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="suggestions")
    retrieved_passage = models.ForeignKey(
        RetrievedPassage, null=True, blank=True, on_delete=models.CASCADE, related_name="suggestions"
    )
    agent = models.CharField(max_length=200)
    value = models.CharField(max_length=20)  # a Relevance for a passage, an AnswerRating for the answer
    score = models.FloatField(null=True, blank=True)
    reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["turn", "retrieved_passage", "agent"],
                condition=Q(retrieved_passage__isnull=False),
                name="suggestion_unique_per_passage_agent",
            ),
            models.UniqueConstraint(
                fields=["turn", "agent"], condition=Q(retrieved_passage__isnull=True), name="suggestion_unique_per_answer_agent"
            ),
            models.CheckConstraint(
                condition=Q(retrieved_passage__isnull=False, value__in=Relevance.values)
                | Q(retrieved_passage__isnull=True, value__in=AnswerRating.values),
                name="suggestion_value_fits_target",
            ),
        ]


class SuggestionAttempt(models.Model):
    """That an agent has run on a turn (done or failed): the idempotency key of the suggestion
    tasks, and where a failure (an endpoint down, a reply that does not parse) is recorded."""

    class Status(models.TextChoices):
        DONE = "done"
        FAILED = "failed"

    turn = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="suggestion_attempts")
    agent = models.CharField(max_length=200)
    status = models.CharField(max_length=10, choices=Status.choices)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["turn", "agent"], name="suggestion_attempt_unique")]


class RetrieverCalibration(models.Model):
    """The retriever agent's score threshold for a knowledge base, chosen to agree best with the
    curators' final judgments (rag.suggestions.threshold_calibrate); the newest row applies.
    `calibrated` false: too few labelled passages yet, `threshold` is the documented default."""

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="retriever_calibrations")
    threshold = models.FloatField()
    calibrated = models.BooleanField()
    labelled_passages = models.PositiveIntegerField()  # relevant or not relevant, with a score
    agreed_passages = models.PositiveIntegerField()
    kappa = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    @property
    def agreement_percent(self) -> float | None:
        return 100.0 * self.agreed_passages / self.labelled_passages if self.labelled_passages else None


class SuggestionAgentAgreement(models.Model):
    """How often an agent's suggestions agreed with the curators' final judgments in a knowledge
    base, for passages or for answers, as last measured; what picks the pre-selected agent."""

    class Target(models.TextChoices):
        PASSAGE = "passage"
        ANSWER = "answer"

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="+")
    agent = models.CharField(max_length=200)
    target = models.CharField(max_length=10, choices=Target.choices)
    items = models.PositiveIntegerField()
    agreed = models.PositiveIntegerField()
    kappa = models.FloatField(null=True, blank=True)
    measured_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["knowledge_base", "agent", "target"], name="agent_agreement_unique")
        ]


class SyntheticQuestionJob(models.Model):
    """Writing synthetic questions for chunks of a knowledge base with an LLM, keeping those the
    live retriever answers with their source chunk (curation.services.synthetic_questions);
    the Celery task only moves this row."""

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    knowledge_base = models.ForeignKey(KnowledgeBase, on_delete=models.CASCADE, related_name="synthetic_question_jobs")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    # What was asked: how many chunks (drawn with `seed`), questions per chunk, the filter's k.
    chunks_requested = models.PositiveIntegerField()
    per_chunk = models.PositiveSmallIntegerField(default=1)
    top_k = models.PositiveSmallIntegerField(default=10)
    seed = models.PositiveIntegerField(default=0)
    model = models.CharField(max_length=200, blank=True)
    retriever_version = models.CharField(max_length=200, blank=True)
    # Chunks handled so far (a redelivered task resumes after them), and what came of them:
    # questions the LLM wrote, kept as turns, dropped by the filter; chunks whose request failed.
    chunks_done = models.PositiveIntegerField(default=0)
    chunks_total = models.PositiveIntegerField(default=0)
    generated = models.PositiveIntegerField(default=0)
    kept = models.PositiveIntegerField(default=0)
    dropped = models.PositiveIntegerField(default=0)
    chunks_failed = models.PositiveIntegerField(default=0)
    last_chunk_error = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.SUCCEEDED, self.Status.FAILED}

    @property
    def progress(self) -> float:
        return self.chunks_done / self.chunks_total if self.chunks_total else 0.0
