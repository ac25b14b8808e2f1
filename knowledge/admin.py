"""The Django admin's view of knowledge bases, documents, embedding spaces, conversations, turns
and API tokens: read-only (knowledge.admin_read_only says why)."""

from knowledge.admin_read_only import read_only_admin_register
from knowledge.models import (
    ApiToken,
    AuditEvent,
    Chunk,
    ChunkEmbedding,
    Conversation,
    Document,
    EmbeddingJob,
    EmbeddingSpace,
    KnowledgeBase,
    QueryEncoder,
    RetrievedPassage,
    Turn,
)

read_only_admin_register(
    KnowledgeBase, Document, Chunk, EmbeddingSpace, QueryEncoder, ChunkEmbedding, EmbeddingJob, Conversation, Turn,
    RetrievedPassage, ApiToken, AuditEvent,
)  # fmt: skip
