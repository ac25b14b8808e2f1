"""Searching a knowledge base's chunks from the workbench, to attach a passage the retriever missed.

Two searches are merged: vector search in the live embedding space (finds paraphrases) and
keyword search (Postgres full text over the chunk text, through a GIN index; when that finds
too few, a plain substring match so codes and names such as "HMG-CoA" are found as typed, and
chunks of documents whose title matches). They are merged by reciprocal rank fusion, which
needs no calibration between cosine similarities and text-search ranks.
"""

from dataclasses import dataclass

from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector
from django.db.models import F, Q

from knowledge.errors import InvalidInput
from knowledge.models import Chunk, Document, KnowledgeBase
from knowledge.selectors import passages_retrieve

MAX_QUERY_LENGTH = 500
MAX_K = 50
# The usual constant of reciprocal rank fusion (Cormack et al. 2009): damps the head of each list.
RRF_K = 60


@dataclass(frozen=True)
class ChunkHit:
    chunk_id: int
    document_id: int
    document_external_id: str
    title: str
    text: str
    score: float  # fused score: higher is better; only comparable within one search
    vector_score: float | None  # cosine similarity, when vector search found it
    keyword_rank: int | None  # 1-based position in the keyword results, when keyword search found it

    @property
    def matched_by(self) -> tuple[str, ...]:
        return tuple(name for name, hit in (("vector", self.vector_score is not None), ("keyword", self.keyword_rank)) if hit)


def _keyword_chunk_ids(*, knowledge_base: KnowledgeBase, query: str, k: int) -> list[int]:
    """Chunk ids by full-text rank over the chunk text; when that finds fewer than k, chunks
    whose text holds the query as typed (what full text misses: stop words, parts of words,
    punctuation inside codes) or whose document's title matches come after, by id.

    The full-text query filters on the stored column the GIN index `chunk_text_search` indexes
    (`Chunk.lexical_vector`, `to_tsvector('english', text)`, no weights, no joined title), so it
    reads the index rather than parsing every chunk of the knowledge base. The fallback has no index and scans the
    chunks (up to the first k - found matches): it runs only when full text came up short.
    """
    text_query = SearchQuery(query, search_type="websearch", config="english")
    chunks = Chunk.objects.filter(knowledge_base=knowledge_base)
    found = list(
        chunks.filter(lexical_vector=text_query)
        .annotate(rank=SearchRank(F("lexical_vector"), text_query))
        .order_by("-rank", "pk")
        .values_list("pk", flat=True)[:k]
    )
    if len(found) < k:
        titled = (
            Document.objects.filter(knowledge_base=knowledge_base)
            .annotate(search=SearchVector("title", config="english"))
            .filter(search=text_query)
        )
        found += (
            chunks.filter(Q(text__icontains=query) | Q(document__in=titled.values("pk")))
            .exclude(pk__in=found)
            .order_by("pk")
            .values_list("pk", flat=True)[: k - len(found)]
        )
    return found


def chunks_search(*, knowledge_base: KnowledgeBase, query: str, k: int = 10) -> list[ChunkHit]:
    """The k best chunks for the query by vector and keyword search merged, best first.

    Without a live embedding space only keyword search runs.
    """
    query = (query or "").replace("\x00", "").strip()
    if not query:
        raise InvalidInput("The search is empty.")
    if len(query) > MAX_QUERY_LENGTH:
        raise InvalidInput(f"The search is longer than {MAX_QUERY_LENGTH} characters.")
    if not 1 <= k <= MAX_K:
        raise InvalidInput(f"k must be between 1 and {MAX_K}, got {k}.")

    vector_hits = {}
    if knowledge_base.live_space is not None:
        vector_hits = {
            hit.chunk_id: hit for hit in passages_retrieve(space=knowledge_base.live_space, query=query, k=k)
        }
    keyword_ids = _keyword_chunk_ids(knowledge_base=knowledge_base, query=query, k=k)
    keyword_rank = {chunk_id: position for position, chunk_id in enumerate(keyword_ids, start=1)}

    fused: dict[int, float] = {}
    for position, chunk_id in enumerate(vector_hits, start=1):
        fused[chunk_id] = fused.get(chunk_id, 0.0) + 1 / (RRF_K + position)
    for chunk_id, position in keyword_rank.items():
        fused[chunk_id] = fused.get(chunk_id, 0.0) + 1 / (RRF_K + position)
    best = sorted(fused, key=lambda chunk_id: (-fused[chunk_id], chunk_id))[:k]

    chunks = Chunk.objects.filter(pk__in=best, knowledge_base=knowledge_base).select_related("document").in_bulk()
    return [
        ChunkHit(
            chunk_id=chunk_id,
            document_id=chunks[chunk_id].document_id,
            document_external_id=chunks[chunk_id].document.external_id,
            title=chunks[chunk_id].document.title,
            text=chunks[chunk_id].text,
            score=fused[chunk_id],
            vector_score=vector_hits[chunk_id].score if chunk_id in vector_hits else None,
            keyword_rank=keyword_rank.get(chunk_id),
        )
        for chunk_id in best
        if chunk_id in chunks  # a chunk deleted between the searches and this read is left out
    ]
