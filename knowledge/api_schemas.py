"""The REST API's request and response schemas, and the serialisers that fill the responses.

knowledge.api validates every body against these classes and returns what `turn_out`,
`passage_out` and `conversation_out` build; the OpenAPI document (/api/v1/openapi.json) is
generated from them, so a field's description here is what a client reads.
"""

from typing import Annotated, Any, Literal

from ninja import Schema
from pydantic import AfterValidator, AllowInfNan, BeforeValidator, Field, Strict, StrictInt

from knowledge.models import Conversation, RetrievalMode, Turn
from rag.text_checks import unstorable_text_problem

# --- field types --------------------------------------------------------------------------


def _storable(value: Any) -> Any:
    # PostgreSQL text and jsonb hold neither NUL nor lone surrogates ("\ud800" in JSON): refuse
    # them here rather than fail at write time (rag.text_checks).
    problem = unstorable_text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


Text = Annotated[str, AfterValidator(_storable)]
JsonObject = Annotated[dict, AfterValidator(_storable)]


# --- schemas ------------------------------------------------------------------------------


class ErrorOut(Schema):
    detail: str = Field(description="What went wrong. A 429 (rate limit) also sends Retry-After: seconds to wait.")
    # A 422 for personal data the knowledge base rejects: the types found (EMAIL_ADDRESS, ...).
    entity_types: list[str] | None = None


class KnowledgeBaseOut(Schema):
    slug: str
    name: str
    description: str
    documents: int
    chunks: int
    live_retriever_version: str | None
    retrieval_mode: str = Field(description="dense, lexical or hybrid: how /ask and /retrieve retrieve by default.")
    generator: str
    embedding_backend: str = Field(
        description="What encodes the live space's chunks and queries: torch, onnx, onnx-int8, openvino or openvino-int8."
    )


# Numbers in bodies are what the OpenAPI schema says and nothing else. Integer: JSON Schema's
# "integer" is any number with a zero fraction, so 81.0 is 81; `true` is not 1 and "5" is not
# 5. Number: an int or a float, never a boolean or a string, and never NaN or Infinity (not
# JSON; clients reading them back would break).


def _integral_float_as_int(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[StrictInt, BeforeValidator(_integral_float_as_int)]
Number = Annotated[float, Strict(), AllowInfNan(False)]


# The knowledge base's retrieval mode unless a request names one (docs/retrieval.md).
Mode = Literal[tuple(RetrievalMode.values)]
MODE_DESCRIPTION = (
    "How to retrieve for this request: dense (the live embedding space), lexical (BM25 over the chunk text) or "
    "hybrid (both, fused by reciprocal rank fusion). Default: the knowledge base's retrieval mode."
)


class AskIn(Schema):
    query: Text = Field(min_length=1, max_length=4000)
    k: Integer = Field(5, ge=1, le=100)
    mode: Mode | None = Field(None, description=MODE_DESCRIPTION)
    conversation_id: Integer | None = Field(None, description="Continue this conversation (ragloop's id).")
    conversation_external_id: Text | None = Field(
        None, min_length=1, max_length=255, description="Continue the conversation with this id of yours, or start it."
    )
    start_conversation: bool = Field(False, description="Start a new conversation (ragloop names it).")
    end_user: Text = Field("", max_length=255, description="Who asks, as your app names them (opaque).")


class RetrieveIn(Schema):
    query: Text = Field(min_length=1, max_length=4000)
    k: Integer = Field(10, ge=1, le=100)
    retriever_version: Text | None = Field(None, max_length=100)
    mode: Mode | None = Field(None, description=MODE_DESCRIPTION)
    rerank: bool = Field(True, description="false: the first stage's order even when a reranker version is live.")


class PassageOut(Schema):
    rank: int
    score: float | None
    document: str = Field(description="The document's external id (or the source id of an ingested turn).")
    chunk: int | None
    title: str
    text: str


class RetrieveOut(Schema):
    retriever_version: str = Field(description='What served, e.g. "base", "bm25" or "base+bm25/rrf60" (hybrid).')
    mode: str = Field(description="The retrieval mode that served: dense, lexical or hybrid.")
    reranker_version: str = Field("", description="The live reranker that reordered the first stage's top N; blank: none.")
    passages: list[PassageOut] = Field(
        description="Best first. score: cosine similarity (dense), BM25 (lexical), the fused score (hybrid), or the "
        "reranker's score when a reranker reordered them."
    )


class MessageOut(Schema):
    role: str
    content: str


class TurnOut(Schema):
    turn_id: int
    knowledge_base: str
    source: str
    external_id: str | None
    conversation_id: int | None
    conversation_external_id: str | None
    position: int | None
    query: str
    rewritten_query: str = Field(description="What retrieval searched for, when the question was a rewritten follow-up.")
    history: list[MessageOut]
    answer: str
    retriever_version: str
    retrieval_mode: str = Field(description="dense, lexical or hybrid for a served turn; blank for a logged one.")
    generator_version: str
    reranker_version: str = Field("", description="The reranker that reordered the passages; blank: none was live.")
    latency_ms: float | None
    latency_split: dict[str, float] = Field(
        default_factory=dict, description="Milliseconds per stage of a served turn: embed, first_stage, rerank, generate."
    )
    feedback: int | None
    feedback_comment: str
    created_at: str
    passages: list[PassageOut]


class PassageIn(Schema):
    text: Text = Field(min_length=1, max_length=100_000)
    source_id: Text = Field("", max_length=512)
    title: Text = Field("", max_length=10_000)
    score: Number | None = None


class TurnIn(Schema):
    external_id: Text = Field(min_length=1, max_length=255)
    query: Text = Field(min_length=1, max_length=20_000)
    answer: Text = Field("", max_length=100_000)
    passages: list[PassageIn] = Field(default_factory=list, max_length=200)
    feedback: Integer | None = Field(None, description="-1 thumbs down, 1 thumbs up")
    feedback_comment: Text = Field("", max_length=10_000)
    retriever_version: Text = Field("", max_length=200)
    generator_version: Text = Field("", max_length=200)
    latency_ms: Number | None = Field(None, ge=0)
    metadata: JsonObject = Field(default_factory=dict)
    created_at: str | None = Field(None, description="ISO 8601; defaults to the time of ingestion")
    conversation_id: Text | None = Field(None, min_length=1, max_length=255, description="Your conversation id.")
    position: Integer | None = Field(None, ge=0, description="0-based place in the conversation.")
    rewritten_query: Text = Field("", max_length=4000, description="The self-contained query you retrieved with.")
    history: list[dict] = Field(default_factory=list, description="The messages before the question.")


class TurnBatchIn(Schema):
    turns: list[TurnIn] = Field(min_length=1, max_length=1000)


class TurnIngestedOut(Schema):
    external_id: str
    turn_id: int
    created: bool


class TurnBatchOut(Schema):
    created: int
    existing: int
    turns: list[TurnIngestedOut]


class ConversationMessageIn(Schema):
    role: Text = Field(description="system, user or assistant (developer is read as system)")
    content: str | list[dict] = Field(description="Text, or OpenAI content parts of type text.")
    passages: list[PassageIn] = Field(
        default_factory=list, max_length=200, description="Assistant messages: the passages the answer was generated from."
    )
    rewritten_query: Text = Field("", max_length=4000, description="Assistant messages: what retrieval searched for.")
    feedback: Integer | None = Field(None, description="Assistant messages: -1 thumbs down, 1 thumbs up")
    feedback_comment: Text = Field("", max_length=10_000)
    created_at: str | None = Field(None, description="ISO 8601 time of an assistant message")


class ConversationIn(Schema):
    external_id: Text = Field(min_length=1, max_length=255)
    end_user: Text = Field("", max_length=255)
    metadata: JsonObject = Field(default_factory=dict)
    retriever_version: Text = Field("", max_length=200)
    generator_version: Text = Field("", max_length=200)
    messages: list[ConversationMessageIn] = Field(min_length=1)


class ConversationIngestedOut(Schema):
    conversation_id: int
    external_id: str
    created: bool
    turns_created: list[int]
    turns_existing: int


class ConversationOut(Schema):
    conversation_id: int
    knowledge_base: str
    external_id: str
    end_user: str
    system_prompt: str
    metadata: dict
    started_at: str
    last_activity_at: str
    turn_count: int


class ConversationPageOut(Schema):
    count: int
    offset: int
    items: list[ConversationOut]


class ConversationDetailOut(ConversationOut):
    turns: list[TurnOut]


class FeedbackIn(Schema):
    feedback: Integer | None = Field(description="-1 thumbs down, 1 thumbs up, null to clear")
    comment: Text = Field("", max_length=10_000)


class IngestOut(Schema):
    created: int
    updated: int
    unchanged: int
    chunks_created: int
    embedding_jobs: list[int]


class DocumentOut(Schema):
    external_id: str
    title: str
    chunks: int
    content_hash: str
    updated_at: str


class DocumentPageOut(Schema):
    count: int
    offset: int
    items: list[DocumentOut]


class EmbeddingJobOut(Schema):
    id: int
    retriever_version: str
    status: str
    total_chunks: int
    embedded_chunks: int
    progress_percent: int
    error: str


def passage_out(passage) -> dict:
    return {
        "rank": passage.rank,
        "score": passage.score,
        "document": passage.source_id,
        "chunk": passage.chunk_id,
        "title": passage.title,
        "text": passage.text,
    }


def turn_out(turn: Turn) -> dict:
    return {
        "turn_id": turn.pk,
        "knowledge_base": turn.knowledge_base.slug,
        "source": turn.source,
        "external_id": turn.external_id,
        "conversation_id": turn.conversation_id,
        "conversation_external_id": turn.conversation.external_id if turn.conversation_id else None,
        "position": turn.position,
        "query": turn.query,
        "rewritten_query": turn.rewritten_query,
        "history": turn.history,
        "answer": turn.answer,
        "retriever_version": turn.retriever_version,
        "retrieval_mode": turn.retrieval_mode,
        "generator_version": turn.generator_version,
        "reranker_version": turn.reranker_version,
        "latency_ms": turn.latency_ms,
        "latency_split": turn.latency_split,
        "feedback": turn.feedback,
        "feedback_comment": turn.feedback_comment,
        "created_at": turn.created_at.isoformat(),
        "passages": [passage_out(p) for p in turn.passages.all()],
    }


def conversation_out(conversation: Conversation) -> dict:
    return {
        "conversation_id": conversation.pk,
        "knowledge_base": conversation.knowledge_base.slug,
        "external_id": conversation.external_id,
        "end_user": conversation.end_user,
        "system_prompt": conversation.system_prompt,
        "metadata": conversation.metadata,
        "started_at": conversation.started_at.isoformat(),
        "last_activity_at": conversation.last_activity_at.isoformat(),
        "turn_count": conversation.turn_count,
    }
