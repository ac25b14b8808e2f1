"""What promotion, rollback and rejection do to embedding spaces: a retriever version that stops
serving has its space retired (never one a live version or a candidate reads, never the base),
going live again restores it or, once its vectors are dropped, is refused with what to do; and
a switch waits for the HNSW index of a large space."""

from datetime import timedelta

import pytest
from django.core.management import call_command

from knowledge.errors import Conflict, InvalidInput
from knowledge.models import ChunkEmbedding, EmbeddingSpace
from knowledge.selectors import retriever_for
from knowledge.services.documents import documents_ingest
from knowledge.services.embedding_spaces import embedding_spaces_drop_expired
from knowledge.services.embeddings import embedding_space_index_build
from rag.documents import SourceDocument
from training.models import Component, ModelVersion
from training.services.versions import model_version_promote, model_version_reject, model_version_rollback

from ..conftest import embed_everything_now
from .conftest import retriever_version

LATE_DOCUMENT = SourceDocument(
    external_id="d-late", title="Iron", text="Iron deficiency causes anaemia and tiredness.", metadata={}
)


def _full_mode_version(knowledge_base, name: str) -> ModelVersion:
    """A retriever version with a space of its own, embedded (the base model stands in for a trained one)."""
    space = EmbeddingSpace.objects.create(
        knowledge_base=knowledge_base, retriever_version=name, model_reference="base:all-MiniLM-L6-v2", dimensions=384
    )
    embed_everything_now(knowledge_base)
    return retriever_version(knowledge_base, name, space=space)


def _state(version: ModelVersion) -> str:
    return EmbeddingSpace.objects.get(pk=version.embedding_space_id).state_label


def _vectors_of_late_document(version: ModelVersion) -> int:
    return ChunkEmbedding.objects.filter(space_id=version.embedding_space_id, chunk__document__external_id="d-late").count()


@pytest.fixture
def kb(embedded_knowledge_base):
    return embedded_knowledge_base


def test_a_promotion_retires_the_previous_version_s_space_and_new_documents_skip_it(kb, admin_user):
    v1, v2, v3 = (_full_mode_version(kb, f"retriever-v{n}") for n in (1, 2, 3))
    model_version_promote(version=v1, actor=admin_user)
    model_version_promote(version=v2, actor=admin_user)

    assert (_state(v1), _state(v2), _state(v3)) == ("retired", "ready", "ready")  # v3 is still a candidate
    assert kb.embedding_spaces.get(retriever_version="base").status == "ready"
    documents_ingest(knowledge_base=kb, documents=[LATE_DOCUMENT])
    embed_everything_now(kb)
    assert (_vectors_of_late_document(v1), _vectors_of_late_document(v2), _vectors_of_late_document(v3)) == (0, 1, 1)
    assert ChunkEmbedding.objects.filter(space__retriever_version="base", chunk__document__external_id="d-late").count() == 1


def test_a_space_a_live_version_or_a_candidate_still_reads_is_kept(kb, admin_user):
    v1 = _full_mode_version(kb, "retriever-v1")
    model_version_promote(version=v1, actor=admin_user)
    # Query-only versions read v1's space with encoders of their own.
    query_only_live = retriever_version(kb, "retriever-v2", space=v1.embedding_space)
    query_only_candidate = retriever_version(kb, "retriever-v3", space=v1.embedding_space)

    model_version_promote(version=query_only_live, actor=admin_user)  # v1 retired, its space still read
    assert _state(v1) == "ready"
    model_version_rollback(knowledge_base=kb, component=Component.RETRIEVER, actor=admin_user)  # back to v1
    assert _state(v1) == "ready"
    model_version_rollback(knowledge_base=kb, component=Component.RETRIEVER, actor=admin_user)  # back to base
    assert _state(v1) == "ready"  # retriever-v3 is still a candidate over it
    model_version_reject(version=query_only_candidate, reason="nDCG@10 fell by 0.04")
    assert _state(v1) == "retired"
    assert set(kb.embedding_spaces.filter(retriever_version="base").values_list("status", flat=True)) == {"ready"}


def test_rejecting_a_candidate_records_why_and_retires_its_space(kb, admin_user):
    candidate = _full_mode_version(kb, "retriever-v1")

    rejected = model_version_reject(version=candidate, reason="  nDCG@10 below the gate (0.41 < 0.45)  ")

    assert (rejected.status, rejected.status_reason) == ("rejected", "nDCG@10 below the gate (0.41 < 0.45)")
    assert _state(candidate) == "retired"
    assert model_version_reject(version=candidate, reason="again").status_reason == rejected.status_reason  # delivered twice
    with pytest.raises(InvalidInput, match="why"):
        model_version_reject(version=_full_mode_version(kb, "retriever-v2"), reason=" ")
    live = _full_mode_version(kb, "retriever-v3")
    model_version_promote(version=live, actor=admin_user)
    with pytest.raises(Conflict, match="'retriever-v3' is live; only a candidate can be rejected"):
        model_version_reject(version=live, reason="late")
    assert _state(live) == "ready"


def test_a_rejected_query_only_candidate_never_retires_the_live_space(kb):
    candidate = retriever_version(kb, "retriever-v1")  # reads the base space, which is live
    model_version_reject(version=candidate, reason="worse")
    assert kb.live_space.status == "ready"


def test_a_rollback_within_the_grace_period_restores_the_space_and_embeds_what_came_meanwhile(kb, admin_user):
    v1, v2 = _full_mode_version(kb, "retriever-v1"), _full_mode_version(kb, "retriever-v2")
    model_version_promote(version=v1, actor=admin_user)
    model_version_promote(version=v2, actor=admin_user)
    documents_ingest(knowledge_base=kb, documents=[LATE_DOCUMENT])  # v1's space skips it

    model_version_rollback(knowledge_base=kb, component=Component.RETRIEVER, actor=admin_user)

    assert retriever_for(knowledge_base=kb).version == "retriever-v1"
    assert (_state(v1), _state(v2)) == ("ready", "retired")
    assert EmbeddingSpace.objects.get(pk=v1.embedding_space_id).retired_at is None
    embed_everything_now(kb)
    assert _vectors_of_late_document(v1) == 1


@pytest.mark.django_db(transaction=True)  # the sweep drops the index CONCURRENTLY, outside a transaction
def test_a_rollback_to_a_space_whose_vectors_were_dropped_is_refused_with_what_to_do(kb, admin_user, settings):
    v1, v2 = _full_mode_version(kb, "retriever-v1"), _full_mode_version(kb, "retriever-v2")
    model_version_promote(version=v1, actor=admin_user)
    model_version_promote(version=v2, actor=admin_user)
    space = EmbeddingSpace.objects.get(pk=v1.embedding_space_id)
    after_grace = space.retired_at + timedelta(seconds=settings.RAGLOOP_RETIRED_SPACE_GRACE_SECONDS + 1)
    assert embedding_spaces_drop_expired(now=after_grace) == [space.pk]

    with pytest.raises(Conflict) as refused:
        model_version_rollback(knowledge_base=kb, component=Component.RETRIEVER, actor=admin_user)

    message = str(refused.value)
    assert "'retriever-v1' cannot go live" in message and "its vectors were dropped on" in message
    assert "manage.py embedding_space_restore test-kb retriever-v1" in message
    v1.refresh_from_db()
    assert v1.status == "retired" and retriever_for(knowledge_base=kb).version == "retriever-v2"  # nothing changed

    call_command("embedding_space_restore", "test-kb", "retriever-v1", stdout=open("/dev/null", "w"))
    with pytest.raises(Conflict, match="until its chunks are embedded"):
        model_version_rollback(knowledge_base=kb, component=Component.RETRIEVER, actor=admin_user)
    embed_everything_now(kb)
    model_version_rollback(knowledge_base=kb, component=Component.RETRIEVER, actor=admin_user)
    assert retriever_for(knowledge_base=kb).version == "retriever-v1"


@pytest.mark.django_db(transaction=True)  # the index is built CONCURRENTLY, outside a transaction
def test_a_promotion_waits_for_the_hnsw_index_of_a_large_space(kb, admin_user, settings, monkeypatch):
    import knowledge.tasks

    builds = []
    monkeypatch.setattr(knowledge.tasks.embedding_space_index_build_task, "delay", builds.append)
    candidate = _full_mode_version(kb, "retriever-v1")
    # Past exact search now (the test corpus has more chunks), and no build was queued when the
    # space was embedded: say the message was lost.
    settings.RAGLOOP_EXACT_SEARCH_MAX_CHUNKS = 2

    with pytest.raises(Conflict) as refused:
        model_version_promote(version=candidate, actor=admin_user)

    assert str(refused.value) == (
        "Model version 'retriever-v1' cannot go live yet: the HNSW index of its embedding space 'retriever-v1' "
        "is still being built (its build was started now); try again once it is built."
    )
    assert builds == [candidate.embedding_space_id]
    assert retriever_for(knowledge_base=kb).version == "base"

    assert embedding_space_index_build(space_id=builds[0]) is True  # what the queued task does
    model_version_promote(version=candidate, actor=admin_user)
    assert retriever_for(knowledge_base=kb).version == "retriever-v1"


def test_a_small_space_goes_live_without_an_index(kb, admin_user, settings):
    settings.RAGLOOP_EXACT_SEARCH_MAX_CHUNKS = kb.chunks.count()
    candidate = _full_mode_version(kb, "retriever-v1")
    model_version_promote(version=candidate, actor=admin_user)
    assert retriever_for(knowledge_base=kb).version == "retriever-v1"
