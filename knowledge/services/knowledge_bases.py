"""Creating knowledge bases, each with its base embedding space live from the start, and
choosing how they retrieve."""

import re
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction

from knowledge.artifact_store import artifact_local_path
from knowledge.errors import Conflict, InvalidInput
from knowledge.models import EmbeddingSpace, InferenceBackend, KnowledgeBase, PersonalDataMode, RetrievalMode
from knowledge.services.audit import audit_record
from rag.embedding import BASE_RETRIEVER_NAME, Embedder, base_retriever_path, load_embedder

BASE_MODEL_REFERENCE = f"base:{BASE_RETRIEVER_NAME}"
BASE_RETRIEVER_VERSION = "base"
DEFAULT_CHUNK_MAX_TOKENS = 200
DEFAULT_CHUNK_OVERLAP_TOKENS = 40
CHUNK_MIN_TOKENS = 16
NAME_MAX_LENGTH = 200
GENERATOR_MODEL_MAX_LENGTH = 500
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def retriever_model_path(model_reference: str) -> Path:
    """Resolve a space's model reference to a folder: the packaged base model, or an artifact
    (fetched from the artifact store into this machine's cache when one is configured)."""
    if model_reference == BASE_MODEL_REFERENCE:
        return base_retriever_path()
    return artifact_local_path(reference=model_reference)


def space_embedder(space: EmbeddingSpace, *, model_reference: str | None = None) -> Embedder:
    """The encoder of a space (or of a query-only model read against it) on the space's backend."""
    return load_embedder(
        retriever_model_path(model_reference or space.model_reference),
        backend=space.inference_backend,
        export_root=settings.RAGLOOP_INFERENCE_EXPORTS_DIR,
    )


def _check_inference_backend(backend: str) -> None:
    if backend not in InferenceBackend.values:
        raise InvalidInput(
            f"Embedding backend {backend!r} is unknown; choose one of {', '.join(InferenceBackend.values)}."
        )


def knowledge_base_create(
    *,
    slug: str,
    name: str = "",
    description: str = "",
    generator_backend: str = KnowledgeBase.GeneratorBackend.EXTRACTIVE,
    generator_model: str = "",
    retrieval_mode: str = RetrievalMode.DENSE,
    personal_data_mode: str = PersonalDataMode.OFF,
    chunk_max_tokens: int = DEFAULT_CHUNK_MAX_TOKENS,
    chunk_overlap_tokens: int = DEFAULT_CHUNK_OVERLAP_TOKENS,
    embedding_backend: str = InferenceBackend.TORCH,
) -> KnowledgeBase:
    """Create the knowledge base and its base space; the CLI (`kb_create`) and the admins' page
    both call this, so they refuse the same input with the same messages."""
    _check_retrieval_mode(retrieval_mode)
    _check_inference_backend(embedding_backend)
    _check_personal_data_mode(personal_data_mode)
    if not _SLUG.match(slug or ""):
        raise InvalidInput(
            f"Knowledge base slug {slug!r} is invalid: use 1-64 lowercase letters, digits and dashes, "
            "starting with a letter or digit."
        )
    if generator_backend not in KnowledgeBase.GeneratorBackend.values:
        raise InvalidInput(
            f"Generator backend {generator_backend!r} is unknown; choose one of "
            f"{', '.join(KnowledgeBase.GeneratorBackend.values)}."
        )
    if generator_backend != KnowledgeBase.GeneratorBackend.EXTRACTIVE and not generator_model:
        raise InvalidInput(f"Generator backend {generator_backend!r} needs a model (a model name or a path).")
    if len(name) > NAME_MAX_LENGTH:
        raise InvalidInput(f"Knowledge base name is {len(name)} characters long; the limit is {NAME_MAX_LENGTH}.")
    if len(generator_model) > GENERATOR_MODEL_MAX_LENGTH:
        raise InvalidInput(f"Generator model is {len(generator_model)} characters long; the limit is {GENERATOR_MODEL_MAX_LENGTH}.")
    embedder = load_embedder(base_retriever_path())
    _check_chunking(chunk_max_tokens, chunk_overlap_tokens, window=embedder.max_tokens - 2)
    try:
        with transaction.atomic():
            knowledge_base = KnowledgeBase.objects.create(
                slug=slug,
                name=name or slug,
                description=description,
                generator_backend=generator_backend,
                generator_model=generator_model,
                retrieval_mode=retrieval_mode,
                personal_data_mode=personal_data_mode,
                chunk_max_tokens=chunk_max_tokens,
                chunk_overlap_tokens=chunk_overlap_tokens,
            )
            # An empty space is complete, so the base space is ready and live at once; new
            # documents are embedded into it as they arrive.
            space = EmbeddingSpace.objects.create(
                knowledge_base=knowledge_base,
                retriever_version=BASE_RETRIEVER_VERSION,
                model_reference=BASE_MODEL_REFERENCE,
                dimensions=embedder.dimensions,
                status=EmbeddingSpace.Status.READY,
                inference_backend=embedding_backend,
            )
            knowledge_base.live_space = space
            knowledge_base.save(update_fields=["live_space"])
            audit_record(
                action="knowledge_base.create", object_type="knowledge_base", object_id=knowledge_base.pk,
                knowledge_base=knowledge_base,
                after={
                    "slug": slug, "generator_backend": generator_backend, "generator_model": generator_model,
                    "chunk_max_tokens": chunk_max_tokens, "chunk_overlap_tokens": chunk_overlap_tokens,
                    "embedding_backend": embedding_backend,
                },
            )  # fmt: skip
    except IntegrityError:
        raise Conflict(f"Knowledge base {slug!r} already exists.") from None
    return knowledge_base


def _check_chunking(max_tokens, overlap_tokens, *, window: int) -> None:
    """Chunks are cut to `max_tokens` of the retriever's tokenizer, each repeating the last
    `overlap_tokens` of the one before (rag.chunking); the base retriever's window bounds both."""
    for label, value in (("Chunk size", max_tokens), ("Chunk overlap", overlap_tokens)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{label} must be a whole number of tokens, got {value!r}.")
    if not CHUNK_MIN_TOKENS <= max_tokens <= window:
        raise InvalidInput(
            f"Chunk size must be between {CHUNK_MIN_TOKENS} and {window} tokens (the base retriever's window), "
            f"got {max_tokens}."
        )
    if overlap_tokens < 0 or overlap_tokens * 2 >= max_tokens:
        raise InvalidInput(
            f"Chunk overlap must be at least 0 and less than half the chunk size ({max_tokens} tokens), got {overlap_tokens}."
        )


def _check_retrieval_mode(mode: str) -> None:
    if mode not in RetrievalMode.values:
        raise InvalidInput(f"Retrieval mode {mode!r} is unknown; choose one of {', '.join(RetrievalMode.values)}.")


def knowledge_base_retrieval_mode_set(*, knowledge_base: KnowledgeBase, mode: str) -> KnowledgeBase:
    """How /ask and /retrieve retrieve from now on when a request names no mode (docs/retrieval.md).
    Nothing is rebuilt: every mode reads what ingestion already stores."""
    _check_retrieval_mode(mode)
    KnowledgeBase.objects.filter(pk=knowledge_base.pk).update(retrieval_mode=mode)
    knowledge_base.retrieval_mode = mode
    return knowledge_base


def _check_personal_data_mode(mode: str) -> None:
    if mode not in PersonalDataMode.values:
        raise InvalidInput(f"Personal-data mode {mode!r} is unknown; choose one of {', '.join(PersonalDataMode.values)}.")


def knowledge_base_personal_data_mode_set(*, knowledge_base: KnowledgeBase, mode: str) -> KnowledgeBase:
    """Choose what happens to personal data in what is stored from now on (docs/personal-data.md);
    what was stored before stays as it is."""
    _check_personal_data_mode(mode)
    KnowledgeBase.objects.filter(pk=knowledge_base.pk).update(personal_data_mode=mode)
    knowledge_base.personal_data_mode = mode
    return knowledge_base
