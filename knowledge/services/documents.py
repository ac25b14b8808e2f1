"""Ingesting documents into a knowledge base: chunk, store, then embed in Celery.

Re-ingesting a document with the same external id and content changes nothing; with changed
content its chunks (and so their embeddings) are replaced in the same transaction.
"""

from dataclasses import dataclass, field

from django.db import transaction

from knowledge.errors import InvalidInput, NotFound
from knowledge.models import (
    Chunk,
    ChunkEmbedding,
    Document,
    EmbeddingJob,
    EmbeddingSpace,
    KnowledgeBase,
)
from knowledge.services.audit import audit_record
from knowledge.services.embeddings import embedding_job_start
from knowledge.services.knowledge_bases import space_embedder
from rag.chunking import TextChunk, chunk_budget, chunk_text
from rag.documents import SourceDocument, content_hash

MAX_DOCUMENTS_PER_INGEST = 50_000


@dataclass
class IngestResult:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    chunks_created: int = 0
    jobs: list[EmbeddingJob] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "chunks_created": self.chunks_created,
            "embedding_jobs": [job.pk for job in self.jobs],
        }


def _chunker_for(knowledge_base: KnowledgeBase):
    """Chunks are sized by the tokenizer of the live retriever's model, under its length limit."""
    space = knowledge_base.live_space
    embedder = space_embedder(space)
    max_tokens = chunk_budget(embedder.max_tokens, requested=knowledge_base.chunk_max_tokens)
    overlap = min(knowledge_base.chunk_overlap_tokens, max(0, max_tokens // 2 - 1))
    counter = embedder.token_counter()

    def chunk(text: str) -> list[TextChunk]:
        return chunk_text(text, counter=counter, max_tokens=max_tokens, overlap_tokens=overlap)

    return chunk


def documents_ingest(*, knowledge_base: KnowledgeBase, documents: list[SourceDocument]) -> IngestResult:
    if not documents:
        raise InvalidInput("No documents to ingest.")
    if len(documents) > MAX_DOCUMENTS_PER_INGEST:
        raise InvalidInput(f"{len(documents)} documents in one ingest; the limit is {MAX_DOCUMENTS_PER_INGEST}.")
    seen: set[str] = set()
    for document in documents:
        if document.external_id in seen:
            raise InvalidInput(f"Document id {document.external_id!r} appears twice in this ingest.")
        seen.add(document.external_id)

    hashes = {document.external_id: content_hash(document) for document in documents}
    existing = dict(
        Document.objects.filter(knowledge_base=knowledge_base, external_id__in=seen).values_list(
            "external_id", "content_hash"
        )
    )
    to_write = [d for d in documents if existing.get(d.external_id) != hashes[d.external_id]]
    # Chunking is CPU work: done before the transaction so the lock below is held briefly.
    chunk = _chunker_for(knowledge_base) if to_write else None
    chunks_by_document = {d.external_id: chunk(d.text) for d in to_write}

    result = IngestResult(unchanged=len(documents) - len(to_write))
    with transaction.atomic():
        # One ingest per knowledge base at a time: two uploads of the same external id must
        # not both create it.
        KnowledgeBase.objects.select_for_update().get(pk=knowledge_base.pk)
        current = {
            d.external_id: d
            for d in Document.objects.filter(knowledge_base=knowledge_base, external_id__in=seen)
        }
        new_chunks: list[Chunk] = []
        for source in to_write:
            document = current.get(source.external_id)
            if document is not None and document.content_hash == hashes[source.external_id]:
                result.unchanged += 1  # written by a concurrent ingest meanwhile
                continue
            if document is None:
                document = Document.objects.create(
                    knowledge_base=knowledge_base,
                    external_id=source.external_id,
                    title=source.title,
                    text=source.text,
                    metadata=source.metadata,
                    content_hash=hashes[source.external_id],
                )
                result.created += 1
            else:
                document.title, document.text, document.metadata = source.title, source.text, source.metadata
                document.content_hash = hashes[source.external_id]
                document.save()
                document.chunks.all().delete()  # cascades to their embeddings in every space
                result.updated += 1
            new_chunks.extend(
                Chunk(
                    document=document,
                    knowledge_base=knowledge_base,
                    order=piece.order,
                    text=piece.text,
                    token_count=piece.token_count,
                )
                for piece in chunks_by_document[source.external_id]
            )
        Chunk.objects.bulk_create(new_chunks, batch_size=2000)
        result.chunks_created = len(new_chunks)
        if new_chunks:
            for space in knowledge_base.embedding_spaces.exclude(status=EmbeddingSpace.Status.RETIRED):
                job = embedding_job_start(space=space)
                if job is not None:
                    result.jobs.append(job)
    return result


@dataclass
class DocumentDeleted:
    external_id: str
    chunks: int
    vectors: int


def document_delete(*, document: Document, actor=None) -> DocumentDeleted:
    """Remove a document with its chunks and their vectors in every space (the foreign keys
    cascade); the turns and labels that cited it keep their copy of the passage text."""
    with transaction.atomic():
        # The same lock as an ingest: an upload of this document meanwhile waits, then re-creates it.
        knowledge_base = KnowledgeBase.objects.select_for_update().get(pk=document.knowledge_base_id)
        document = Document.objects.filter(pk=document.pk, knowledge_base=knowledge_base).first()
        if document is None:
            raise NotFound("That document was already deleted.")
        chunk_ids = list(document.chunks.values_list("pk", flat=True))
        vectors = ChunkEmbedding.objects.filter(chunk_id__in=chunk_ids).count()
        deleted = DocumentDeleted(external_id=document.external_id, chunks=len(chunk_ids), vectors=vectors)
        audit_record(
            action="document.delete", object_type="document", object_id=document.pk, knowledge_base=knowledge_base,
            actor=actor, before={"external_id": document.external_id, "chunks": deleted.chunks, "vectors": vectors},
        )  # fmt: skip
        document.delete()
    return deleted
