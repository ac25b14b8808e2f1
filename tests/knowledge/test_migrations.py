"""Upgrading a database made before the knowledge app existed: every row stays, and what was
live is written onto the knowledge base.

The test takes this database back to the old layout's head (curation 0006, training 0001, no
knowledge app), fills it through the historical models as the old code would have, then runs
`migrate` forward to today's layout and reads everything back through today's models.
"""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

OLD_HEAD = [("curation", "0006_turn_created_at_default"), ("training", "0001_initial"), ("knowledge", None)]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor


def _fill_old_layout(apps) -> dict:
    User = apps.get_model("auth", "User")
    KnowledgeBase = apps.get_model("curation", "KnowledgeBase")
    Document = apps.get_model("curation", "Document")
    Chunk = apps.get_model("curation", "Chunk")
    EmbeddingSpace = apps.get_model("curation", "EmbeddingSpace")
    ChunkEmbedding = apps.get_model("curation", "ChunkEmbedding")
    EmbeddingJob = apps.get_model("curation", "EmbeddingJob")
    Turn = apps.get_model("curation", "Turn")
    RetrievedPassage = apps.get_model("curation", "RetrievedPassage")
    ApiToken = apps.get_model("curation", "ApiToken")
    Membership = apps.get_model("curation", "Membership")
    Label = apps.get_model("curation", "Label")
    PassageJudgment = apps.get_model("curation", "PassageJudgment")
    ModelVersion = apps.get_model("training", "ModelVersion")
    DatasetSnapshot = apps.get_model("training", "DatasetSnapshot")

    admin = User.objects.create(username="old-admin", is_superuser=True)
    kb = KnowledgeBase.objects.create(slug="old-kb", name="Old KB", generator_backend="extractive")
    base = EmbeddingSpace.objects.create(
        knowledge_base=kb, retriever_version="base", model_reference="base:all-MiniLM-L6-v2", dimensions=3, status="ready"
    )
    kb.live_space = base
    kb.save()
    document = Document.objects.create(knowledge_base=kb, external_id="doc-1", text="Vitamin D.", content_hash="h")
    chunk = Chunk.objects.create(document=document, knowledge_base=kb, order=0, text="Vitamin D.", token_count=3)
    ChunkEmbedding.objects.create(chunk=chunk, space=base, embedding=[0.1, 0.2, 0.3])
    EmbeddingJob.objects.create(space=base, status="succeeded", total_chunks=1, embedded_chunks=1)
    turn = Turn.objects.create(knowledge_base=kb, source="served", query="vitamin d?", answer="Yes.", queue_tier=1)
    passage = RetrievedPassage.objects.create(turn=turn, rank=1, score=0.9, chunk=chunk, document=document, text="Vitamin D.")
    token = ApiToken.objects.create(user=admin, name="app", key_prefix="rl_x", key_hash="0" * 64)
    token.knowledge_bases.add(kb)
    Membership.objects.create(knowledge_base=kb, user=admin)
    label = Label.objects.create(turn=turn, curator=admin, answer_rating="correct")
    PassageJudgment.objects.create(label=label, retrieved_passage=passage, relevance="relevant")
    # A live query-only retriever version (its own query encoder over the base space) and a
    # live generator version, as promotion left them in the old layout.
    ModelVersion.objects.create(
        knowledge_base=kb, component="retriever", name="retriever-v1", status="live",
        embedding_space=base, query_model_reference="kb/retriever/1/query_encoder",
    )  # fmt: skip
    ModelVersion.objects.create(
        knowledge_base=kb, component="generator", name="generator-v1", status="live",
        generator_backend="hf", generator_model="/models/tiny", generator_adapter_path="kb/generator/2/adapter",
    )  # fmt: skip
    snapshot = DatasetSnapshot.objects.create(knowledge_base=kb, example_count=1, train_count=1)
    return {"snapshot": snapshot.pk, "kb": kb.pk, "chunk": chunk.pk, "turn": turn.pk, "passage": passage.pk, "token": token.pk, "space": base.pk}


@pytest.mark.django_db(transaction=True)
def test_a_database_of_the_old_layout_keeps_every_row_and_what_was_live():
    executor = _migrate(OLD_HEAD)
    ids = _fill_old_layout(executor.loader.project_state([t for t in OLD_HEAD if t[1]]).apps)

    leaves = MigrationExecutor(connection).loader.graph.leaf_nodes()
    _migrate(leaves)
    assert MigrationExecutor(connection).migration_plan(leaves) == []

    from django.contrib.contenttypes.models import ContentType

    from curation.models import Label, Membership, PassageJudgment
    from knowledge.models import (
        ApiToken,
        Chunk,
        ChunkEmbedding,
        Document,
        EmbeddingJob,
        EmbeddingSpace,
        KnowledgeBase,
        QueryEncoder,
        RetrievedPassage,
        Turn,
    )
    from knowledge.selectors import live_version_names, retriever_for
    from training.models import DatasetSnapshot, ModelVersion

    kb = KnowledgeBase.objects.get(pk=ids["kb"])
    assert (kb.slug, kb.live_space_id) == ("old-kb", ids["space"])
    assert Document.objects.get(knowledge_base=kb).external_id == "doc-1"
    assert Chunk.objects.get(pk=ids["chunk"]).text == "Vitamin D."
    assert [round(x, 3) for x in ChunkEmbedding.objects.get(chunk_id=ids["chunk"]).embedding] == [0.1, 0.2, 0.3]
    assert EmbeddingJob.objects.get(space_id=ids["space"]).embedded_chunks == 1
    turn = Turn.objects.get(pk=ids["turn"])
    assert (turn.query, turn.queue_tier) == ("vitamin d?", 1)
    assert RetrievedPassage.objects.get(pk=ids["passage"]).turn_id == ids["turn"]
    assert list(ApiToken.objects.get(pk=ids["token"]).knowledge_bases.values_list("slug", flat=True)) == ["old-kb"]
    assert Membership.objects.get(knowledge_base=kb).user.username == "old-admin"
    judgment = PassageJudgment.objects.get(label__turn=turn)
    assert (judgment.relevance, judgment.retrieved_passage_id) == ("relevant", ids["passage"])
    assert Label.objects.get(turn=turn).answer_rating == "correct"
    assert ModelVersion.objects.filter(knowledge_base=kb).count() == 2
    assert EmbeddingSpace.objects.get(pk=ids["space"]).retriever_version == "base"

    # A snapshot made before says its split was by turn id; a new one splits by query text.
    assert DatasetSnapshot.objects.get(pk=ids["snapshot"]).split_rule == "turn_id"
    assert DatasetSnapshot(knowledge_base=kb).split_rule == "query_text"

    # What was live is now on the knowledge base, and the query-only version serves by name.
    assert (kb.live_retriever_version, kb.live_query_model_reference) == ("retriever-v1", "kb/retriever/1/query_encoder")
    assert (kb.live_generator_version, kb.live_generator_backend, kb.live_generator_model, kb.live_generator_adapter_path) == (
        "generator-v1", "hf", "/models/tiny", "kb/generator/2/adapter",
    )  # fmt: skip
    assert live_version_names(knowledge_base=kb) == {"retriever": "retriever-v1", "generator": "generator-v1"}
    encoder = QueryEncoder.objects.get(knowledge_base=kb, retriever_version="retriever-v1")
    assert (encoder.space_id, encoder.model_reference) == (ids["space"], "kb/retriever/1/query_encoder")
    assert retriever_for(knowledge_base=kb, retriever_version="retriever-v1").query_model_reference == encoder.model_reference

    # The admin's permissions follow the models: their content types are the knowledge app's.
    moved = ContentType.objects.filter(model__in=["knowledgebase", "turn", "apitoken"])
    assert sorted(moved.values_list("app_label", "model")) == [
        ("knowledge", "apitoken"), ("knowledge", "knowledgebase"), ("knowledge", "turn"),
    ]  # fmt: skip
