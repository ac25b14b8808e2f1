"""Creating knowledge bases, each with its base embedding space live from the start, and
choosing how they retrieve."""

import re
from pathlib import Path

from django.db import IntegrityError, transaction

from knowledge.artifact_store import artifact_local_path
from knowledge.errors import Conflict, InvalidInput
from knowledge.models import EmbeddingSpace, KnowledgeBase, PersonalDataMode, RetrievalMode
from knowledge.services.audit import audit_record
from rag.embedding import BASE_RETRIEVER_NAME, base_retriever_path, load_embedder

BASE_MODEL_REFERENCE = f"base:{BASE_RETRIEVER_NAME}"
BASE_RETRIEVER_VERSION = "base"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


def retriever_model_path(model_reference: str) -> Path:
    """Resolve a space's model reference to a folder: the packaged base model, or an artifact
    (fetched from the artifact store into this machine's cache when one is configured)."""
    if model_reference == BASE_MODEL_REFERENCE:
        return base_retriever_path()
    return artifact_local_path(reference=model_reference)


def knowledge_base_create(
    *,
    slug: str,
    name: str = "",
    description: str = "",
    generator_backend: str = KnowledgeBase.GeneratorBackend.EXTRACTIVE,
    generator_model: str = "",
    retrieval_mode: str = RetrievalMode.DENSE,
    personal_data_mode: str = PersonalDataMode.OFF,
) -> KnowledgeBase:
    _check_retrieval_mode(retrieval_mode)
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
    embedder = load_embedder(base_retriever_path())
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
            )
            # An empty space is complete, so the base space is ready and live at once; new
            # documents are embedded into it as they arrive.
            space = EmbeddingSpace.objects.create(
                knowledge_base=knowledge_base,
                retriever_version=BASE_RETRIEVER_VERSION,
                model_reference=BASE_MODEL_REFERENCE,
                dimensions=embedder.dimensions,
                status=EmbeddingSpace.Status.READY,
            )
            knowledge_base.live_space = space
            knowledge_base.save(update_fields=["live_space"])
            audit_record(
                action="knowledge_base.create", object_type="knowledge_base", object_id=knowledge_base.pk,
                knowledge_base=knowledge_base,
                after={"slug": slug, "generator_backend": generator_backend, "generator_model": generator_model},
            )  # fmt: skip
    except IntegrityError:
        raise Conflict(f"Knowledge base {slug!r} already exists.") from None
    return knowledge_base


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
