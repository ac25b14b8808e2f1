"""Read operations: knowledge bases, which retriever serves (the live one that promotion wrote
onto the knowledge base, or a named version), retrieval (dense from an embedding space, lexical
by BM25 over the chunk text, or both fused: docs/retrieval.md), the live reranker's second
stage over the first stage's top candidates, and conversations."""

import functools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import connection, transaction
from django.db.models import QuerySet
from django.utils import timezone

from knowledge.artifact_store import artifact_local_path
from knowledge.errors import InvalidInput, NotFound, UpstreamError
from knowledge.models import (
    ApiToken,
    ChunkEmbedding,
    Conversation,
    EmbeddingJob,
    EmbeddingSpace,
    KnowledgeBase,
    QueryEncoder,
    RetrievalMode,
    Turn,
)
from knowledge.services.embeddings import as_vector_literal
from knowledge.services.knowledge_bases import retriever_model_path, space_embedder
from knowledge.services.personal_data import end_user_references
from rag.conversation import ChatMessage
from rag.fusion import reciprocal_rank_fusion, weighted_score_fusion
from rag.progress import duration_text, remaining_seconds
from rag.query_cache import QueryVectorCache
from rag.reranking import load_reranker, rerank_order

if TYPE_CHECKING:
    import numpy as np


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
    """{"retriever": name, "generator": name} of what serves now, without loading any model.

    Reads the knowledge base afresh: a promotion since the caller loaded it changed its live
    pointers."""
    return live_version_names_of(knowledge_base=_live_now(knowledge_base))


def live_version_names_of(*, knowledge_base: KnowledgeBase) -> dict[str, str]:
    """What is live, from a knowledge base row the caller has loaded (with `live_space`).

    The one definition every page, API endpoint and command shows: the live retriever version
    promotion wrote (a query-only version serves from its parent's space, so the space's own
    name would say "base"), else the space serving; the live generator version, else the
    configured generator."""
    space_name = knowledge_base.live_space.retriever_version if knowledge_base.live_space_id else "none"
    return {
        "retriever": knowledge_base.live_retriever_version or space_name,
        "generator": knowledge_base.live_generator_version or knowledge_base.generator_version,
    }


def passages_retrieve(
    *, space: EmbeddingSpace, query: str, k: int, query_model_reference: str | None = None, timings: dict | None = None
) -> list[RetrievedChunk]:
    """The k chunks nearest to the query by cosine similarity, best first.

    The query is encoded with `query_model_reference` (a query-only retriever version's own
    encoder), or with the space's model.

    Small spaces are scanned exactly; past RAGLOOP_EXACT_SEARCH_MAX_CHUNKS the space's
    partial HNSW index answers, with ef_search raised to at least max(RAGLOOP_HNSW_EF_SEARCH,
    2k) so a top-k query gets k results.

    `timings`, when given, gets the milliseconds spent encoding the query added under "embed".
    """
    if not query.strip():
        raise InvalidInput("The query is empty.")
    if not 1 <= k <= settings.RAGLOOP_MAX_K:
        raise InvalidInput(f"k must be between 1 and {settings.RAGLOOP_MAX_K}, got {k}.")
    started = time.perf_counter()
    query_vector = _query_vector(space=space, query=query, query_model_reference=query_model_reference)
    if timings is not None:
        timings["embed"] = timings.get("embed", 0.0) + (time.perf_counter() - started) * 1000
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


# BM25 with the parameters Anserini uses for BEIR ("BM25 flat"): k1 saturates term frequency,
# b normalises by the chunk's length relative to the knowledge base's mean.
BM25_K1 = 0.9
BM25_B = 0.4
# What a lexical-only turn records as its retriever version.
LEXICAL_RETRIEVER_VERSION = "bm25"

_BM25_SQL = """
    WITH q AS (
        -- The query's lexemes (the chunks' own parser, stemmer and stop words), ORed: plainto
        -- ANDs them, and its text form quotes every lexeme, none of which holds a space.
        SELECT replace(plainto_tsquery('english', %(query)s)::text, ' & ', ' | ')::tsquery AS tsq,
               tsvector_to_array(to_tsvector('english', %(query)s)) AS lexemes
    ),
    matched AS (
        -- Every chunk holding a query lexeme (the GIN index), with each such lexeme's term
        -- frequency read from the stored tsvector.
        SELECT c.id AS chunk_id, c.token_count AS length, t.lexeme, coalesce(array_length(t.positions, 1), 1) AS tf
        FROM curation_chunk c CROSS JOIN q CROSS JOIN LATERAL unnest(c.lexical_vector) AS t
        WHERE c.knowledge_base_id = %(kb)s AND c.lexical_vector @@ q.tsq AND t.lexeme = ANY(q.lexemes)
    ),
    frequency AS (SELECT lexeme, count(*)::float8 AS df FROM matched GROUP BY lexeme),
    collection AS (
        -- An index-only scan of chunk_kb_token_count.
        SELECT count(*)::float8 AS n, greatest(coalesce(avg(token_count)::float8, 1), 1) AS mean_length
        FROM curation_chunk WHERE knowledge_base_id = %(kb)s
    ),
    scored AS (
        SELECT m.chunk_id, sum(
            ln(1 + (collection.n - f.df + 0.5) / (f.df + 0.5))
            * m.tf * (%(k1)s + 1) / (m.tf + %(k1)s * (1 - %(b)s + %(b)s * m.length / collection.mean_length))
        ) AS score
        FROM matched m JOIN frequency f USING (lexeme) CROSS JOIN collection
        GROUP BY m.chunk_id
        ORDER BY score DESC, m.chunk_id
        LIMIT %(k)s
    )
    SELECT s.chunk_id, s.score, c.text, d.id, d.external_id, d.title
    FROM scored s JOIN curation_chunk c ON c.id = s.chunk_id JOIN curation_document d ON d.id = c.document_id
    ORDER BY s.score DESC, s.chunk_id
"""


def passages_retrieve_lexical(*, knowledge_base: KnowledgeBase, query: str, k: int) -> list[RetrievedChunk]:
    """The k chunks of the knowledge base with the highest BM25 score for the query, best first
    (ties to the lower chunk id); chunks sharing no lexeme with the query are never returned.

    BM25 is computed in one statement over the stored tsvectors (`Chunk.lexical_vector`): the GIN
    index finds the chunks holding any query lexeme, their term frequencies come from the
    tsvector's positions, document frequencies from those same chunks, and the chunk count and
    mean length (the chunker's token count) from the knowledge base. Nothing is cached, so a
    document ingested or replaced counts from its transaction's commit on. The cost grows with
    the number of chunks holding a query lexeme (docs/retrieval.md).
    """
    if not query.strip():
        raise InvalidInput("The query is empty.")
    if not 1 <= k <= settings.RAGLOOP_MAX_K:
        raise InvalidInput(f"k must be between 1 and {settings.RAGLOOP_MAX_K}, got {k}.")
    parameters = {"query": query, "kb": knowledge_base.pk, "k": k, "k1": BM25_K1, "b": BM25_B}
    with connection.cursor() as cursor:
        cursor.execute(_BM25_SQL, parameters)
        rows = cursor.fetchall()
    return [_retrieved_chunk(row, rank=rank) for rank, row in enumerate(rows, start=1)]


@dataclass(frozen=True)
class Retrieval:
    """What a search returned, and how: the mode, the retriever version and the reranker version
    (blank: none) a turn records, and where the time went in milliseconds ({"embed",
    "first_stage", "rerank"}; first_stage leaves the query's encoding out)."""

    mode: str
    retriever_version: str
    passages: list[RetrievedChunk]
    reranker_version: str = ""
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RerankerChoice:
    """The live reranker: its version name and its cross-encoder folder."""

    version: str
    path: Path


def reranker_for(*, knowledge_base: KnowledgeBase) -> RerankerChoice | None:
    """The live reranker that promotion wrote onto the knowledge base (read afresh), or None."""
    row = KnowledgeBase.objects.filter(pk=knowledge_base.pk).values("live_reranker_version", "live_reranker_path").first()
    if row is None or not row["live_reranker_version"] or not row["live_reranker_path"]:
        return None
    # Relative to the artifacts folder; on a machine that did not train it, fetched from the store.
    return RerankerChoice(row["live_reranker_version"], artifact_local_path(reference=row["live_reranker_path"]))


def passages_rerank(*, reranker: RerankerChoice, query: str, candidates: list[RetrievedChunk], k: int) -> list[RetrievedChunk]:
    """The k best of `candidates` by the reranker's score, best first (ties keep the first
    stage's order); each passage's score is then the reranker's."""
    try:
        scores = load_reranker(str(reranker.path)).scores(query, [p.text for p in candidates])
    except (OSError, ValueError) as error:
        raise UpstreamError(f"The live reranker {reranker.version!r} cannot be loaded from {reranker.path}: {error}") from error
    return [
        replace(candidates[index], rank=rank, score=scores[index])
        for rank, index in enumerate(rerank_order(scores)[:k], start=1)
    ]


def retrieval_mode_checked(mode: str | None) -> str | None:
    """The mode if it is one of RetrievalMode (None: the knowledge base's), else InvalidInput."""
    if mode is not None and mode not in RetrievalMode.values:
        raise InvalidInput(f"Retrieval mode {mode!r} is unknown; choose one of {', '.join(RetrievalMode.values)}.")
    return mode


def hybrid_version_name(dense_version: str) -> str:
    """The retriever version of a hybrid search: the dense version, the lexical one and the fusion."""
    if settings.RAGLOOP_HYBRID_FUSION == "score":
        return f"{dense_version}+{LEXICAL_RETRIEVER_VERSION}/score-a{settings.RAGLOOP_HYBRID_ALPHA:g}"
    return f"{dense_version}+{LEXICAL_RETRIEVER_VERSION}/rrf{settings.RAGLOOP_RRF_K}"


def passages_search(
    *,
    knowledge_base: KnowledgeBase,
    query: str,
    k: int,
    mode: str | None = None,
    retriever_version: str | None = None,
    rerank: bool = True,
) -> Retrieval:
    """The k best chunks for the query in the given mode, or the knowledge base's, reranked by
    the live reranker when one is live (and `rerank`).

    With a live reranker the first stage returns its top max(k, rerank_top_n) candidates
    (at most RAGLOOP_MAX_K), the reranker scores each (query, chunk) pair and the k best
    by its score are returned, with its score as theirs.

    dense: the live retriever (or the named version) over its embedding space. lexical: BM25
    over the chunk text (no embedding space, no version to name). hybrid: both retrievers'
    top max(k, RAGLOOP_HYBRID_CANDIDATES) fused (reciprocal rank fusion with k =
    RAGLOOP_RRF_K, or weighted min-max score fusion when RAGLOOP_HYBRID_FUSION is "score"),
    the first k of the union; a passage's score is then its fused score.
    """
    mode = retrieval_mode_checked(mode) or knowledge_base.retrieval_mode
    if not 1 <= k <= settings.RAGLOOP_MAX_K:
        raise InvalidInput(f"k must be between 1 and {settings.RAGLOOP_MAX_K}, got {k}.")
    reranker = reranker_for(knowledge_base=knowledge_base) if rerank else None
    first_k = k
    if reranker is not None:
        top_n = KnowledgeBase.objects.filter(pk=knowledge_base.pk).values_list("rerank_top_n", flat=True).first() or k
        first_k = min(settings.RAGLOOP_MAX_K, max(k, top_n))
    timings: dict[str, float] = {"embed": 0.0}
    started = time.perf_counter()
    first = _first_stage(
        knowledge_base=knowledge_base, query=query, k=first_k, mode=mode, retriever_version=retriever_version, timings=timings
    )
    timings["first_stage"] = (time.perf_counter() - started) * 1000 - timings["embed"]
    if reranker is None:
        return replace(first, timings={**timings, "rerank": 0.0})
    started = time.perf_counter()
    passages = passages_rerank(reranker=reranker, query=query, candidates=first.passages, k=k)
    timings["rerank"] = (time.perf_counter() - started) * 1000
    return replace(first, passages=passages, reranker_version=reranker.version, timings=timings)


def _first_stage(
    *, knowledge_base: KnowledgeBase, query: str, k: int, mode: str, retriever_version: str | None, timings: dict
) -> Retrieval:
    """passages_search's first stage: the k best chunks in `mode`, before any reranking."""
    if mode == RetrievalMode.LEXICAL:
        if retriever_version:
            raise InvalidInput("Lexical retrieval uses no retriever version: send a retriever version with dense or hybrid.")
        passages = passages_retrieve_lexical(knowledge_base=knowledge_base, query=query, k=k)
        return Retrieval(mode, LEXICAL_RETRIEVER_VERSION, passages)
    retriever = retriever_for(knowledge_base=knowledge_base, retriever_version=retriever_version)
    if mode == RetrievalMode.DENSE:
        passages = passages_retrieve(
            space=retriever.space, query=query, k=k, query_model_reference=retriever.query_model_reference, timings=timings
        )
        return Retrieval(mode, retriever.version, passages)
    depth = min(settings.RAGLOOP_MAX_K, max(k, settings.RAGLOOP_HYBRID_CANDIDATES))
    dense = passages_retrieve(
        space=retriever.space, query=query, k=depth, query_model_reference=retriever.query_model_reference, timings=timings
    )
    lexical = passages_retrieve_lexical(knowledge_base=knowledge_base, query=query, k=depth)
    if settings.RAGLOOP_HYBRID_FUSION == "score":
        fused = weighted_score_fusion(
            [(p.chunk_id, p.score) for p in dense], [(p.chunk_id, p.score) for p in lexical], alpha=settings.RAGLOOP_HYBRID_ALPHA
        )
    else:
        fused = reciprocal_rank_fusion([[p.chunk_id for p in dense], [p.chunk_id for p in lexical]], k=settings.RAGLOOP_RRF_K)
    by_chunk = {p.chunk_id: p for p in (*lexical, *dense)}
    passages = [
        replace(by_chunk[chunk_id], rank=rank, score=score) for rank, (chunk_id, score) in enumerate(fused[:k], start=1)
    ]
    return Retrieval(mode, hybrid_version_name(retriever.version), passages)


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
    embedder = space_embedder(space, model_reference=query_model_reference)
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
    """The query as a vector literal, encoded by the query-only version's encoder or the space's
    model on the space's inference backend, from the process's query cache when the same encoder
    and backend met the same text before."""
    model_path = retriever_model_path(query_model_reference or space.model_reference)
    embedder = lambda: space_embedder(space, model_reference=query_model_reference)  # noqa: E731
    vector = query_vector_cache().vector(
        encoder=f"{model_path}@{space.inference_backend}", text=query, encode=lambda text: embedder().encode_queries([text])[0]
    )
    return as_vector_literal(vector)


@functools.cache
def query_vector_cache() -> QueryVectorCache:
    """This process's cache of query vectors, sized by RAGLOOP_QUERY_CACHE_SIZE."""
    return QueryVectorCache(max_entries=settings.RAGLOOP_QUERY_CACHE_SIZE)


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
        # As stored: a reference holding personal data is kept as its keyed digest.
        conversations = conversations.filter(end_user__in=end_user_references(end_user))
    return conversations.order_by("-last_activity_at", "-id")


def conversation_turns(*, conversation: Conversation) -> QuerySet[Turn]:
    return conversation.turns.order_by("position").prefetch_related("passages")


def space_chunks_sample(*, space: EmbeddingSpace, limit: int, seed: int = 0) -> list[tuple[int, str]]:
    """(chunk id, text) of up to `limit` chunks that have a vector in `space`, by chunk id.

    More chunks than `limit`: a sample drawn with `seed`, the same for the same chunks and seed.
    """
    import random

    from knowledge.models import Chunk, ChunkEmbedding

    chunk_ids = list(ChunkEmbedding.objects.filter(space=space).order_by("chunk_id").values_list("chunk_id", flat=True))
    if len(chunk_ids) > limit:
        chunk_ids = sorted(random.Random(seed).sample(chunk_ids, limit))
    texts = dict(Chunk.objects.filter(pk__in=chunk_ids).values_list("pk", "text"))
    return [(chunk_id, texts[chunk_id]) for chunk_id in chunk_ids if chunk_id in texts]


def space_stored_vectors(*, space: EmbeddingSpace, limit: int, seed: int = 0) -> tuple[list[str], "np.ndarray"]:
    """(chunk texts, their vectors as the space stores them) of up to `limit` of its chunks, by
    chunk id (a seeded sample when it holds more): what query-only training matches its query
    encoder to, read instead of encoded again."""
    import random

    import numpy as np

    from knowledge.models import ChunkEmbedding

    chunk_ids = list(ChunkEmbedding.objects.filter(space=space).order_by("chunk_id").values_list("chunk_id", flat=True))
    if len(chunk_ids) > limit:
        chunk_ids = sorted(random.Random(seed).sample(chunk_ids, limit))
    texts, vectors = [], []
    for start in range(0, len(chunk_ids), 5000):
        rows = (
            ChunkEmbedding.objects.filter(space=space, chunk_id__in=chunk_ids[start : start + 5000])
            .order_by("chunk_id")
            .values_list("chunk__text", "embedding")
        )
        for text, vector in rows:
            texts.append(text)
            vectors.append(np.asarray(vector, dtype=np.float32))
    matrix = np.stack(vectors) if vectors else np.zeros((0, space.dimensions), dtype=np.float32)
    return texts, matrix


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


def live_space_chunks_missing(*, knowledge_base: KnowledgeBase) -> int:
    """How many of the knowledge base's chunks have no vector yet in its live embedding space
    (all of them when there is no live space): while it is above 0, asking searches part of
    the corpus. Two COUNTs."""
    total = knowledge_base.chunks.count()
    if knowledge_base.live_space_id is None:
        return total
    embedded = ChunkEmbedding.objects.filter(space_id=knowledge_base.live_space_id).count()
    return max(0, total - embedded)


EMBEDDING_JOBS_SHOWN = 3


def embedding_jobs_recent(*, knowledge_base: KnowledgeBase) -> list:
    """The knowledge base's newest embedding jobs, each with `eta` (text, "" when unknown) and
    `eta_seconds`: the rest of its chunks at the pace of those embedded since it started."""
    jobs = list(
        EmbeddingJob.objects.filter(space__knowledge_base=knowledge_base).select_related("space").order_by("-created_at")[:EMBEDDING_JOBS_SHOWN]
    )
    now = timezone.now()
    for job in jobs:
        job.eta_seconds = None
        if job.status == EmbeddingJob.Status.RUNNING and job.started_at and job.total_chunks:
            job.eta_seconds = remaining_seconds(
                elapsed_seconds=(now - job.started_at).total_seconds(), fraction_done=job.embedded_chunks / job.total_chunks
            )
        job.eta = duration_text(job.eta_seconds)
    return jobs
