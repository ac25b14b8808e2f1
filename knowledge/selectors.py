"""Read operations: knowledge bases, which retriever serves (the live one that promotion wrote
onto the knowledge base, or a named version), retrieval from an embedding space, and
conversations."""

from dataclasses import dataclass

from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet

from knowledge.errors import InvalidInput, NotFound
from knowledge.models import ApiToken, Conversation, EmbeddingSpace, KnowledgeBase, QueryEncoder, Turn
from knowledge.services.embeddings import as_vector_literal
from knowledge.services.knowledge_bases import retriever_model_path
from rag.conversation import ChatMessage
from rag.embedding import load_embedder


@dataclass(frozen=True)
class RetrievedChunk:
    rank: int
    score: float
    chunk_id: int
    document_id: int
    document_external_id: str
    title: str
    text: str


def knowledge_base_get(*, slug: str) -> KnowledgeBase:
    # A NUL cannot be in any slug, and PostgreSQL would reject it with an error, not "no row".
    knowledge_base = None if "\x00" in slug else KnowledgeBase.objects.select_related("live_space").filter(slug=slug).first()
    if knowledge_base is None:
        raise NotFound(f"Knowledge base {slug!r} not found.")
    return knowledge_base


def embedding_space_for(*, knowledge_base: KnowledgeBase, retriever_version: str | None = None) -> EmbeddingSpace:
    """The live space, or the named retriever version's space if it is ready."""
    if not retriever_version:
        if knowledge_base.live_space is None:
            raise NotFound(f"Knowledge base {knowledge_base.slug!r} has no live retriever version.")
        return knowledge_base.live_space
    space = knowledge_base.embedding_spaces.filter(retriever_version=retriever_version).first()
    if space is None:
        raise NotFound(f"Retriever version {retriever_version!r} not found in {knowledge_base.slug!r}.")
    if space.status != EmbeddingSpace.Status.READY:
        raise InvalidInput(f"Retriever version {retriever_version!r} is {space.status}, not ready to serve.")
    return space


@dataclass(frozen=True)
class RetrieverChoice:
    """What serves retrieval: the version name logged on turns, the space holding the document
    vectors, and the query encoder (a query-only version shares its parent's space)."""

    version: str
    space: EmbeddingSpace
    query_model_reference: str


def retriever_for(*, knowledge_base: KnowledgeBase, retriever_version: str | None = None) -> RetrieverChoice:
    """The live retriever, or a named one.

    Live: what promotion and rollback wrote onto the knowledge base (the live version's name,
    space and query encoder), else the base space. Named: a version with a query encoder of its
    own over another version's space (QueryEncoder), else the space of that name. A named
    version must be ready: its space fully embedded.
    """
    if not retriever_version:
        knowledge_base = _live_now(knowledge_base)
        if knowledge_base.live_retriever_version and knowledge_base.live_space is not None:
            space = knowledge_base.live_space
            return RetrieverChoice(
                knowledge_base.live_retriever_version, space, knowledge_base.live_query_model_reference or space.model_reference
            )
        space = embedding_space_for(knowledge_base=knowledge_base)
        return RetrieverChoice(space.retriever_version, space, space.model_reference)
    encoder = (
        QueryEncoder.objects.filter(knowledge_base=knowledge_base, retriever_version=retriever_version)
        .select_related("space")
        .first()
    )
    if encoder is None:
        space = embedding_space_for(knowledge_base=knowledge_base, retriever_version=retriever_version)
        return RetrieverChoice(space.retriever_version, space, space.model_reference)
    if encoder.space.status != EmbeddingSpace.Status.READY:
        raise InvalidInput(
            f"Retriever version {retriever_version!r} is not ready to serve (its embedding space is {encoder.space.state_label})."
        )
    return RetrieverChoice(encoder.retriever_version, encoder.space, encoder.model_reference)


def _live_now(knowledge_base: KnowledgeBase) -> KnowledgeBase:
    """The knowledge base as it is now: a promotion since the caller loaded it changed its live pointers."""
    return KnowledgeBase.objects.select_related("live_space").get(pk=knowledge_base.pk)


def live_version_names(*, knowledge_base: KnowledgeBase) -> dict[str, str]:
    """{"retriever": name, "generator": name} of what serves now, without loading any model."""
    knowledge_base = _live_now(knowledge_base)
    base_space = knowledge_base.live_space.retriever_version if knowledge_base.live_space else "none"
    return {
        "retriever": knowledge_base.live_retriever_version or base_space,
        "generator": knowledge_base.live_generator_version or knowledge_base.generator_version,
    }


def passages_retrieve(
    *, space: EmbeddingSpace, query: str, k: int, query_model_reference: str | None = None
) -> list[RetrievedChunk]:
    """The k chunks nearest to the query by cosine similarity, best first.

    The query is encoded with `query_model_reference` (a query-only retriever version's own
    encoder), or with the space's model.

    Small spaces are scanned exactly; past RAGLOOP_EXACT_SEARCH_MAX_CHUNKS the space's
    partial HNSW index answers, with ef_search raised to at least max(RAGLOOP_HNSW_EF_SEARCH,
    2k) so a top-k query gets k results.
    """
    if not query.strip():
        raise InvalidInput("The query is empty.")
    if not 1 <= k <= settings.RAGLOOP_MAX_K:
        raise InvalidInput(f"k must be between 1 and {settings.RAGLOOP_MAX_K}, got {k}.")
    query_vector = _query_vector(space=space, query=query, query_model_reference=query_model_reference)
    dims = int(space.dimensions)
    if space.hnsw_index_built:
        # Matches the partial index expression exactly, so the planner can use it.
        distance = f"e.embedding::vector({dims}) <=> %s::vector({dims})"
    else:
        # No cast: this expression matches no index, so Postgres scans the space exactly.
        distance = "e.embedding <=> %s::vector"
    sql = f"""
        SELECT nearest.chunk_id, 1 - nearest.distance, c.text, d.id, d.external_id, d.title
        FROM (
            SELECT e.chunk_id, {distance} AS distance
            FROM curation_chunkembedding e
            WHERE e.space_id = {int(space.pk)}
            ORDER BY distance
            LIMIT %s
        ) AS nearest
        JOIN curation_chunk c ON c.id = nearest.chunk_id
        JOIN curation_document d ON d.id = c.document_id
        ORDER BY nearest.distance, nearest.chunk_id
    """
    with transaction.atomic(), connection.cursor() as cursor:
        if space.hnsw_index_built:
            cursor.execute("SET LOCAL hnsw.ef_search = %s", [min(1000, max(settings.RAGLOOP_HNSW_EF_SEARCH, 2 * k))])
        cursor.execute(sql, [query_vector, k])
        rows = cursor.fetchall()
    return [_retrieved_chunk(row, rank=rank) for rank, row in enumerate(rows, start=1)]


def chunk_rankings_many(
    *, space: EmbeddingSpace, queries: list[str], k: int, query_model_reference: str | None = None
) -> list[list[tuple[int, float]]]:
    """For each query, the (document id, score) of its k nearest chunks in the space, best first:
    passages_retrieve's ranking without the texts, for a batch of queries at once.

    The queries are encoded in one batch and ranked in one statement (a LATERAL top-k per query,
    with the same distance expression as passages_retrieve, so a large space walks its HNSW
    index and a small one is scanned exactly); ties go to the lower chunk id, so the same
    models give the same rankings every time. For background work (re-scoring the queue), not
    for a request.
    """
    if not queries:
        return []
    if not 1 <= k <= settings.RAGLOOP_MAX_K:
        raise InvalidInput(f"k must be between 1 and {settings.RAGLOOP_MAX_K}, got {k}.")
    embedder = load_embedder(retriever_model_path(query_model_reference or space.model_reference))
    vectors = [as_vector_literal(vector) for vector in embedder.encode_queries([q if q.strip() else "-" for q in queries])]
    dims = int(space.dimensions)
    if space.hnsw_index_built:
        # The index expression, ordered by it alone so the index walk can answer.
        distance, order = f"e.embedding::vector({dims}) <=> q.vector::vector({dims})", "distance"
    else:
        distance, order = "e.embedding <=> q.vector::vector", "distance, e.chunk_id"
    sql = f"""
        SELECT q.position, c.document_id, 1 - nearest.distance
        FROM unnest(%s::text[]) WITH ORDINALITY AS q(vector, position)
        CROSS JOIN LATERAL (
            SELECT e.chunk_id, {distance} AS distance
            FROM curation_chunkembedding e
            WHERE e.space_id = {int(space.pk)}
            ORDER BY {order}
            LIMIT %s
        ) AS nearest
        JOIN curation_chunk c ON c.id = nearest.chunk_id
        ORDER BY q.position, nearest.distance, nearest.chunk_id
    """
    with transaction.atomic(), connection.cursor() as cursor:
        if space.hnsw_index_built:
            cursor.execute("SET LOCAL hnsw.ef_search = %s", [min(1000, max(settings.RAGLOOP_HNSW_EF_SEARCH, 2 * k))])
        cursor.execute(sql, [vectors, k])
        rows = cursor.fetchall()
    rankings: list[list[tuple[int, float]]] = [[] for _ in queries]
    for position, document_id, score in rows:
        rankings[position - 1].append((document_id, float(score)))
    return rankings


def _query_vector(*, space: EmbeddingSpace, query: str, query_model_reference: str | None) -> str:
    """The query as a vector literal, encoded by the query-only version's encoder or the space's model."""
    embedder = load_embedder(retriever_model_path(query_model_reference or space.model_reference))
    return as_vector_literal(embedder.encode_queries([query])[0])


def _retrieved_chunk(row: tuple, *, rank: int) -> RetrievedChunk:
    """A (chunk id, score, text, document id, document external id, title) row."""
    chunk_id, score, text, document_id, external_id, title = row
    return RetrievedChunk(
        rank=rank,
        score=float(score),
        chunk_id=chunk_id,
        document_id=document_id,
        document_external_id=external_id,
        title=title,
        text=text,
    )


def best_chunk_per_document(
    *, space: EmbeddingSpace, query: str, document_external_ids: list[str], query_model_reference: str | None = None
) -> dict[str, RetrievedChunk]:
    """For each named document of the space's knowledge base, its chunk nearest to the query.

    Documents with no chunk embedded in the space are left out. The query is encoded as in
    passages_retrieve; the scan covers only those documents' chunks (exact, no index).
    """
    if not document_external_ids:
        return {}
    query_vector = _query_vector(space=space, query=query, query_model_reference=query_model_reference)
    sql = """
        SELECT DISTINCT ON (d.external_id)
               c.id, 1 - (e.embedding <=> %s::vector), c.text, d.id, d.external_id, d.title
        FROM curation_chunkembedding e
        JOIN curation_chunk c ON c.id = e.chunk_id
        JOIN curation_document d ON d.id = c.document_id
        WHERE e.space_id = %s AND d.knowledge_base_id = %s AND d.external_id = ANY(%s)
        ORDER BY d.external_id, e.embedding <=> %s::vector, c.id
    """
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            [query_vector, space.pk, space.knowledge_base_id, list(document_external_ids), query_vector],
        )
        rows = cursor.fetchall()
    return {row[4]: _retrieved_chunk(row, rank=1) for row in rows}


# --- conversations ------------------------------------------------------------------------


def conversation_messages(*, conversation: Conversation) -> list[ChatMessage]:
    """The conversation so far as chat messages: its system prompt (if any), then each turn's
    question and answer in position order."""
    messages = [ChatMessage("system", conversation.system_prompt)] if conversation.system_prompt.strip() else []
    for query, answer in conversation.turns.order_by("position").values_list("query", "answer"):
        messages.append(ChatMessage("user", query))
        messages.append(ChatMessage("assistant", answer or "(no answer)"))
    return messages


def conversations_list(*, knowledge_base: KnowledgeBase, end_user: str | None = None) -> QuerySet[Conversation]:
    """The knowledge base's conversations, most recently active first."""
    conversations = Conversation.objects.filter(knowledge_base=knowledge_base)
    if end_user is not None:
        conversations = conversations.filter(end_user=end_user)
    return conversations.order_by("-last_activity_at", "-id")


def conversation_turns(*, conversation: Conversation) -> QuerySet[Turn]:
    return conversation.turns.order_by("position").prefetch_related("passages")


def api_tokens_of(*, user) -> QuerySet:
    """The user's API tokens, newest first (revoked ones too: the page says since when)."""
    return ApiToken.objects.filter(user=user).prefetch_related("knowledge_bases").order_by("-created_at", "-id")


def api_tokens_of_others(*, user) -> QuerySet:
    """Other users' unrevoked tokens (for an admin, who may revoke them)."""
    return (
        ApiToken.objects.filter(revoked_at__isnull=True)
        .exclude(user=user)
        .select_related("user")
        .prefetch_related("knowledge_bases")
        .order_by("user__username", "-created_at")
    )
