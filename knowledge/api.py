"""REST API under /api/v1/ (OpenAPI schema at /api/v1/openapi.json, docs at /api/v1/docs).

Endpoints validate input with the schemas of knowledge.api_schemas, check the token's scope,
call one service or selector, and serialise the result. Every error is a JSON `{"detail": "..."}` with a 4xx status
(502 when a generator backend fails, 503 when a model artifact cannot be fetched or fails its
checksum check, or the task queue is down).

This module holds the endpoints and the error mapping, in the order of the OpenAPI document;
the request and response schemas, and the serialisers that fill them, are in
knowledge.api_schemas.
"""

import json
import time

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.http.multipartparser import MultiPartParserError
from django.utils.dateparse import parse_datetime
from ninja import File, NinjaAPI, Router
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.files import UploadedFile
from ninja.parser import Parser
from ninja.security import HttpBearer

from knowledge.api_schemas import (
    AskIn,
    ConversationDetailOut,
    ConversationIn,
    ConversationIngestedOut,
    ConversationPageOut,
    DocumentPageOut,
    EmbeddingJobOut,
    ErrorOut,
    FeedbackIn,
    IngestOut,
    KnowledgeBaseOut,
    RetrieveIn,
    RetrieveOut,
    TurnBatchIn,
    TurnBatchOut,
    TurnOut,
    conversation_out,
    turn_out,
)
from knowledge.error_views import OUTAGE_ERRORS, outage_of, outage_response
from knowledge.errors import Forbidden, InvalidInput, NotFound, PersonalDataRejected, ServiceError
from knowledge.models import ApiToken, Conversation, EmbeddingJob, KnowledgeBase, Turn
from knowledge.rate_limits import API, INGEST, rate_limit_hit
from knowledge.selectors import (
    conversation_turns,
    conversations_list,
    knowledge_base_get,
    live_version_names_of,
    passages_search,
    query_vector_cache,
)
from knowledge.services.conversations import (
    ConversationMessage,
    ConversationRecord,
    conversation_ask,
    conversation_ingest,
)
from knowledge.services.documents import documents_ingest
from knowledge.services.tokens import (
    api_token_authenticate,
    api_token_can_access,
    api_token_has_scope,
    api_token_knowledge_bases,
)
from knowledge.services.turns import (
    PassageRecord,
    TurnRecord,
    turn_ask,
    turn_feedback_set,
    turns_ingest,
)
from rag.conversation import ChatMessage, ConversationError, history_parse, message_content_text
from rag.documents import DocumentParseError, parse_upload


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str) -> ApiToken | None:
        return api_token_authenticate(plain=token)


class JsonObjectParser(Parser):
    """Every JSON body here is an object; saying so beats "query: Field required" for `[]`."""

    def parse_body(self, request: HttpRequest) -> dict:
        body = json.loads(request.body)
        if not isinstance(body, dict):
            raise ValueError(f"the body must be a JSON object, not {type(body).__name__}")
        return body


class RagloopApi(NinjaAPI):
    """The API, whose OpenAPI document also says that a 429 carries Retry-After (ninja's
    response declarations name bodies only)."""

    def get_openapi_schema(self, **kwargs):
        schema = super().get_openapi_schema(**kwargs)
        for operations in schema["paths"].values():
            for operation in operations.values():
                for status, response in operation.get("responses", {}).items():
                    if str(status) == "429":
                        response["description"] = "Rate limit exceeded (requests per minute per token and knowledge base)"
                        response["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
        return schema


RETRY_AFTER_HEADER = {
    "description": "Seconds until the token's budget on this knowledge base opens again.",
    "schema": {"type": "integer", "minimum": 1},
}

api = RagloopApi(
    title="ragloop API",
    version="1",
    description="Serve RAG answers with the live model versions, log turns, ingest documents.",
    auth=BearerToken(),
    urls_namespace="api-v1",
    parser=JsonObjectParser(),
)


# --- errors -------------------------------------------------------------------------------


@api.exception_handler(ServiceError)
def on_service_error(request, error: ServiceError):
    body = {"detail": str(error)}
    if isinstance(error, PersonalDataRejected):
        body["entity_types"] = error.entity_types
    response = api.create_response(request, body, status=error.status_code)
    if getattr(error, "retry_after_seconds", None):
        response["Retry-After"] = str(error.retry_after_seconds)
    return response


# The first part of a pydantic error location is where the value came from, not its name.
_PARAMETER_SOURCES = {"body", "query", "path", "file", "form", "header", "cookie"}


@api.exception_handler(ValidationError)
def on_validation_error(request, error: ValidationError):
    problems = []
    for item in error.errors:
        loc = list(item.get("loc", ()))
        if loc and loc[0] in _PARAMETER_SOURCES:
            loc = loc[1:]
            if loc and loc[0] == "payload":
                loc = loc[1:]
        where = ".".join(str(part) for part in loc)
        problems.append(f"{where}: {item.get('msg')}" if where else str(item.get("msg")))
    return api.create_response(request, {"detail": "; ".join(problems), "errors": error.errors}, status=422)


@api.exception_handler(HttpError)
def on_http_error(request, error: HttpError):
    message = str(error)
    if error.__cause__ is not None:  # e.g. "Cannot parse request body" + why
        message = f"{message}: {error.__cause__}"
    return api.create_response(request, {"detail": message}, status=error.status_code)


@api.exception_handler(SuspiciousOperation)
def on_suspicious_request(request, error: SuspiciousOperation):
    # Django's own limits (too many uploaded files or form fields, a body over
    # DATA_UPLOAD_MAX_MEMORY_SIZE) would otherwise answer with its HTML error page.
    status = 413 if isinstance(error, RequestDataTooBig) else 400
    return api.create_response(request, {"detail": str(error) or "The request is malformed."}, status=status)


@api.exception_handler(MultiPartParserError)
def on_malformed_multipart(request, error: MultiPartParserError):
    # e.g. a multipart Content-Type without a boundary
    return api.create_response(request, {"detail": f"The multipart body is malformed: {error}"}, status=400)


def on_outage(request, error: Exception):
    # PostgreSQL or Redis cannot be reached: 503 with Retry-After, whatever DEBUG says
    # (knowledge.error_views answers the same for the pages and for errors outside a view).
    return outage_response(request, outage_of(error) or "database")


for _outage_error in OUTAGE_ERRORS:
    api.add_exception_handler(_outage_error, on_outage)


@api.exception_handler(AuthenticationError)
def on_authentication_error(request, error):
    return api.create_response(
        request, {"detail": "Missing or unknown API token (send 'Authorization: Bearer <token>')."}, status=401
    )


# A bound below Postgres's bigint OFFSET, so a huge offset is a 422 rather than a 500.
MAX_OFFSET = 1_000_000_000


SCOPE_ACTIONS = {"read": "read", "ask": "ask or retrieve", "ingest": "ingest"}


def _require(request: HttpRequest, *scopes: str) -> None:
    """The token holds one of `scopes` (or admin), else 403 naming what it may do."""
    if not any(api_token_has_scope(token=request.auth, scope=scope) for scope in scopes):
        wanted = " or ".join(SCOPE_ACTIONS[scope] for scope in scopes)
        raise Forbidden(f"This token may not {wanted}; its scopes are {', '.join(request.auth.scopes) or 'none'}.")


def _throttle(request: HttpRequest, knowledge_base: KnowledgeBase | None, budget: str = API) -> None:
    """Count the request against the token's budget on the knowledge base: 429 past it
    (knowledge.rate_limits)."""
    rate_limit_hit(token_id=request.auth.pk, knowledge_base_id=knowledge_base.pk if knowledge_base else None, budget=budget)


def server_timing_header(timings: dict[str, float]) -> str:
    """The `Server-Timing` header (https://www.w3.org/TR/server-timing/) of an ask or retrieve:
    each stage's milliseconds, and this process's query-vector cache counts so far."""
    stats = query_vector_cache().stats()
    stages = [f"{name};dur={value:.2f}" for name, value in timings.items() if isinstance(value, (int, float))]
    return ", ".join([*stages, f'cache;desc="hits={stats.hits} misses={stats.misses} entries={stats.entries}"'])


def _knowledge_base_for(request: HttpRequest, slug: str, *scopes: str, budget: str = API) -> KnowledgeBase:
    _require(request, *scopes)
    if "\x00" in slug:  # "%00" in the URL; no slug has one, and Postgres cannot compare it
        raise NotFound(f"Knowledge base {slug!r} not found.")
    knowledge_base = knowledge_base_get(slug=slug)
    if not api_token_can_access(token=request.auth, knowledge_base=knowledge_base):
        # The same answer as an unknown KB: a token must not learn which KBs exist.
        raise NotFound(f"Knowledge base {slug!r} not found.")
    _throttle(request, knowledge_base, budget)
    return knowledge_base


def _history(raw: list[dict], *, field: str) -> list[ChatMessage]:
    try:
        return history_parse(raw, field=field)
    except ConversationError as error:
        raise InvalidInput(str(error)) from error


def _page_bounds(offset: int, limit: int) -> None:
    if not 0 <= offset <= MAX_OFFSET or not 1 <= limit <= 500:
        raise InvalidInput(f"offset must be between 0 and {MAX_OFFSET} and limit between 1 and 500.")


def _turn_loaded(turn_id: int) -> Turn | None:
    return Turn.objects.select_related("knowledge_base", "conversation").prefetch_related("passages").filter(pk=turn_id).first()


def _turn_for(request: HttpRequest, turn_id: int, *scopes: str) -> Turn:
    _require(request, *scopes)
    turn = _turn_loaded(turn_id)
    if turn is None or not api_token_can_access(token=request.auth, knowledge_base=turn.knowledge_base):
        raise NotFound(f"Turn {turn_id} not found.")
    _throttle(request, turn.knowledge_base)
    return turn


def _time(value: str | None, *, field: str):
    """An ISO 8601 time with a zone, or None; 422 for anything else."""
    if not value:
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:  # well formed but impossible, e.g. month 13
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise InvalidInput(f"{field}: {value!r} is not an ISO 8601 time with a zone.")
    return parsed


# --- endpoints ----------------------------------------------------------------------------

kbs = Router(tags=["knowledge bases"])
turns = Router(tags=["turns"])
# 429: over the token's requests per minute on the knowledge base (knowledge.rate_limits), with Retry-After.
ERRORS = {400: ErrorOut, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut, 409: ErrorOut, 413: ErrorOut, 422: ErrorOut, 429: ErrorOut}


@kbs.get("", response={200: list[KnowledgeBaseOut], **ERRORS})
def knowledge_base_list(request):
    _require(request, "read", "ask", "ingest")
    _throttle(request, None)
    visible = api_token_knowledge_bases(token=request.auth).select_related("live_space").order_by("slug")
    return [
        {
            "slug": kb.slug,
            "name": kb.name,
            "description": kb.description,
            "documents": kb.documents.count(),
            "chunks": kb.chunks.count(),
            "live_retriever_version": live["retriever"],
            "retrieval_mode": kb.retrieval_mode,
            "generator": live["generator"],
            "embedding_backend": kb.live_space.inference_backend if kb.live_space else "torch",
        }
        for kb in visible
        for live in [live_version_names_of(knowledge_base=kb)]
    ]


@kbs.post("/{slug}/ask", response={200: TurnOut, 502: ErrorOut, 503: ErrorOut, **ERRORS})
def ask(request, slug: str, payload: AskIn, response: HttpResponse):
    """Answer with the live retriever and generator; the turn is stored with its passages.

    With `conversation_id`, `conversation_external_id` or `start_conversation` the question is
    the next turn of a conversation: a follow-up is rewritten to stand alone before retrieval
    (`rewritten_query`), and the generator sees the earlier turns. `mode` retrieves dense,
    lexical or hybrid for this turn, which records it (`retrieval_mode`, `retriever_version`)."""
    knowledge_base = _knowledge_base_for(request, slug, "ask")
    started = time.perf_counter()
    if payload.conversation_id is not None and payload.conversation_external_id is not None:
        raise InvalidInput("Send conversation_id or conversation_external_id, not both.")
    if payload.conversation_id is not None or payload.conversation_external_id is not None or payload.start_conversation:
        turn = conversation_ask(
            knowledge_base=knowledge_base,
            question=payload.query,
            k=payload.k,
            conversation_id=payload.conversation_id,
            conversation_external_id=payload.conversation_external_id,
            end_user=payload.end_user,
            mode=payload.mode,
        )
    else:
        turn = turn_ask(knowledge_base=knowledge_base, query=payload.query, k=payload.k, mode=payload.mode)
    # Storing the turn: the service's time beyond composing the answer (which the turn records).
    stored_ms = max(0.0, (time.perf_counter() - started) * 1000 - (turn.latency_ms or 0.0))
    response["Server-Timing"] = server_timing_header({**(turn.latency_split or {}), "store": stored_ms})
    return turn_out(_turn_loaded(turn.pk))


@kbs.post("/{slug}/retrieve", response={200: RetrieveOut, 503: ErrorOut, **ERRORS})
def retrieve(request, slug: str, payload: RetrieveIn, response: HttpResponse):
    """Passages only; nothing is logged. `retriever_version` picks a ready non-live version (dense
    or hybrid); `mode` retrieves dense, lexical or hybrid instead of the knowledge base's mode,
    so the same query can be compared side by side."""
    knowledge_base = _knowledge_base_for(request, slug, "ask")
    retrieval = passages_search(
        knowledge_base=knowledge_base,
        query=payload.query,
        k=payload.k,
        mode=payload.mode,
        retriever_version=payload.retriever_version,
        rerank=payload.rerank,
    )
    passages = retrieval.passages
    response["Server-Timing"] = server_timing_header(retrieval.timings)
    return {
        "retriever_version": retrieval.retriever_version,
        "mode": retrieval.mode,
        "reranker_version": retrieval.reranker_version,
        "passages": [
            {
                "rank": p.rank,
                "score": p.score,
                "document": p.document_external_id,
                "chunk": p.chunk_id,
                "title": p.title,
                "text": p.text,
            }
            for p in passages
        ],
    }


@kbs.post("/{slug}/turns", response={200: TurnBatchOut, **ERRORS})
def turns_ingest_batch(request, slug: str, payload: TurnBatchIn):
    """Log turns from an external RAG app. Idempotent: a known external id is left as it is."""
    knowledge_base = _knowledge_base_for(request, slug, "ingest", budget=INGEST)
    records = []
    for index, turn in enumerate(payload.turns):
        created_at = _time(turn.created_at, field=f"turns.{index}.created_at")
        records.append(
            TurnRecord(
                external_id=turn.external_id,
                query=turn.query,
                answer=turn.answer,
                passages=[PassageRecord(text=p.text, source_id=p.source_id, title=p.title, score=p.score) for p in turn.passages],
                feedback=turn.feedback,
                feedback_comment=turn.feedback_comment,
                retriever_version=turn.retriever_version,
                generator_version=turn.generator_version,
                latency_ms=turn.latency_ms,
                metadata=turn.metadata,
                created_at=created_at,
                conversation_id=turn.conversation_id,
                position=turn.position,
                rewritten_query=turn.rewritten_query,
                history=_history(turn.history, field=f"turns.{index}.history"),
            )
        )
    result = turns_ingest(knowledge_base=knowledge_base, records=records)
    return {
        "created": len(result.created),
        "existing": len(result.existing),
        "turns": [
            {
                "external_id": r.external_id,
                "turn_id": result.created.get(r.external_id) or result.existing[r.external_id],
                "created": r.external_id in result.created,
            }
            for r in records
        ],
    }


@kbs.post("/{slug}/conversations", response={200: ConversationIngestedOut, **ERRORS})
def conversation_ingest_one(request, slug: str, payload: ConversationIn):
    """Log a whole conversation in the OpenAI messages format, one turn per assistant message.
    Idempotent on `external_id`: sent again with more messages, only the new turns are added;
    a history that differs from the stored one is refused (409)."""
    knowledge_base = _knowledge_base_for(request, slug, "ingest", budget=INGEST)
    messages = []
    for index, message in enumerate(payload.messages):
        where = f"messages[{index}]"
        try:
            content = message_content_text(message.content, where=where)
        except ConversationError as error:
            raise InvalidInput(str(error)) from error
        messages.append(
            ConversationMessage(
                role=message.role,
                content=content,
                passages=[PassageRecord(text=p.text, source_id=p.source_id, title=p.title, score=p.score) for p in message.passages],
                rewritten_query=message.rewritten_query,
                feedback=message.feedback,
                feedback_comment=message.feedback_comment,
                created_at=_time(message.created_at, field=f"{where}.created_at"),
            )
        )
    result = conversation_ingest(
        knowledge_base=knowledge_base,
        record=ConversationRecord(
            external_id=payload.external_id,
            messages=messages,
            end_user=payload.end_user,
            metadata=payload.metadata,
            retriever_version=payload.retriever_version,
            generator_version=payload.generator_version,
        ),
    )
    return {
        "conversation_id": result.conversation.pk,
        "external_id": result.conversation.external_id,
        "created": result.created,
        "turns_created": result.turns_created,
        "turns_existing": result.turns_existing,
    }


@kbs.get("/{slug}/conversations", response={200: ConversationPageOut, **ERRORS})
def conversation_list(request, slug: str, end_user: str | None = None, offset: int = 0, limit: int = 50):
    """The knowledge base's conversations, most recently active first; `end_user` filters."""
    knowledge_base = _knowledge_base_for(request, slug, "read")
    _page_bounds(offset, limit)
    conversations = conversations_list(knowledge_base=knowledge_base, end_user=end_user)
    return {
        "count": conversations.count(),
        "offset": offset,
        "items": [conversation_out(c) for c in conversations.select_related("knowledge_base")[offset : offset + limit]],
    }


@kbs.post("/{slug}/documents", response={200: IngestOut, 503: ErrorOut, **ERRORS})
def documents_upload(request, slug: str, files: list[UploadedFile] = File(...)):
    """Upload files (BEIR or generic JSONL, .txt, .md, .pdf); chunks are embedded by workers."""
    knowledge_base = _knowledge_base_for(request, slug, "ingest")
    documents = []
    try:
        for upload in files:
            documents.extend(parse_upload(filename=upload.name, data=upload.read()))
    except DocumentParseError as error:
        raise InvalidInput(str(error)) from error
    return documents_ingest(knowledge_base=knowledge_base, documents=documents).as_dict()


@kbs.get("/{slug}/documents", response={200: DocumentPageOut, **ERRORS})
def documents_list(request, slug: str, offset: int = 0, limit: int = 50):
    knowledge_base = _knowledge_base_for(request, slug, "read")
    _page_bounds(offset, limit)
    documents = knowledge_base.documents.order_by("external_id")

    page = documents.annotate(chunk_count=Count("chunks"))[offset : offset + limit]
    return {
        "count": documents.count(),
        "offset": offset,
        "items": [
            {
                "external_id": d.external_id,
                "title": d.title,
                "chunks": d.chunk_count,
                "content_hash": d.content_hash,
                "updated_at": d.updated_at.isoformat(),
            }
            for d in page
        ],
    }


@kbs.get("/{slug}/embedding-jobs/{job_id}", response={200: EmbeddingJobOut, **ERRORS})
def embedding_job_get(request, slug: str, job_id: int):
    knowledge_base = _knowledge_base_for(request, slug, "read", "ingest")
    job = EmbeddingJob.objects.select_related("space").filter(pk=job_id, space__knowledge_base=knowledge_base).first()
    if job is None:
        raise NotFound(f"Embedding job {job_id} not found in {slug!r}.")
    return {
        "id": job.pk,
        "retriever_version": job.space.retriever_version,
        "status": job.status,
        "total_chunks": job.total_chunks,
        "embedded_chunks": job.embedded_chunks,
        "progress_percent": job.progress_percent,
        "error": job.error,
    }


@turns.get("/{turn_id}", response={200: TurnOut, **ERRORS})
def turn_get(request, turn_id: int):
    return turn_out(_turn_for(request, turn_id, "read"))


@turns.post("/{turn_id}/feedback", response={200: TurnOut, **ERRORS})
def turn_feedback(request, turn_id: int, payload: FeedbackIn):
    turn = turn_feedback_set(turn=_turn_for(request, turn_id, "ask", "ingest"), feedback=payload.feedback, comment=payload.comment)
    return turn_out(turn)


conversations = Router(tags=["conversations"])


@conversations.get("/{conversation_id}", response={200: ConversationDetailOut, **ERRORS})
def conversation_get(request, conversation_id: int):
    """A conversation with its turns in order (query, rewritten query, answer, passages, feedback)."""
    _require(request, "read")
    conversation = Conversation.objects.select_related("knowledge_base").filter(pk=conversation_id).first()
    if conversation is None or not api_token_can_access(token=request.auth, knowledge_base=conversation.knowledge_base):
        raise NotFound(f"Conversation {conversation_id} not found.")
    _throttle(request, conversation.knowledge_base)
    turns_in_order = conversation_turns(conversation=conversation).select_related("knowledge_base", "conversation")
    return {**conversation_out(conversation), "turns": [turn_out(t) for t in turns_in_order]}


api.add_router("/kbs", kbs)
api.add_router("/turns", turns)
api.add_router("/conversations", conversations)
