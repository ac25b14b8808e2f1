"""Dataset snapshots from final judgments; promotion and rollback switch what serving uses."""

import pytest

from curation.services.labels import LabelInput, label_submit
from knowledge.errors import Conflict, InvalidInput
from knowledge.models import EmbeddingSpace, KnowledgeBase, QueryEncoder, Turn
from knowledge.selectors import live_version_names, retriever_for
from knowledge.services.turns import (
    PassageRecord,
    TurnRecord,
    generator_for,
    turn_ask,
    turns_ingest,
)
from rag.conversation import ChatMessage
from rag.datasets import split_for, split_key
from rag.embedding import base_retriever_path
from training.models import Component, ModelVersion, PromotionEvent, SnapshotExample
from training.services.snapshots import (
    dataset_snapshot_create,
    history_as_served,
    snapshot_dataset_examples,
)
from training.services.versions import (
    model_version_promote,
    model_version_register,
    model_version_rollback,
)

from .conftest import CORRECTED_QUERY, SYSTEM_MESSAGE, conversation_turns

# The packaged base model by its folder: a query encoder reference that differs from the space's.
BASE_MODEL_PATH = str(base_retriever_path())


def _judge(turn, curator, *, relevant_rank=1, answer="correct", gold=""):
    passages = list(turn.passages.order_by("rank"))
    judgments = {p.pk: ("relevant" if p.rank == relevant_rank else "not_relevant") for p in passages}
    answer = answer if turn.answer.strip() else ""  # a turn logged without an answer has none to rate
    return label_submit(turn=turn, curator=curator, data=LabelInput(passages=judgments, answer_rating=answer, gold_answer=gold))


def test_a_snapshot_freezes_final_judgments_with_lineage(embedded_knowledge_base, curator):
    statins = turn_ask(knowledge_base=embedded_knowledge_base, query="Which enzyme do statins inhibit?", k=3)
    sleep = turn_ask(knowledge_base=embedded_knowledge_base, query="What does sleep do to memory?", k=3)
    unlabelled = turn_ask(knowledge_base=embedded_knowledge_base, query="coffee", k=3)
    label_a = _judge(statins, curator, gold="HMG-CoA reductase.")
    label_b = _judge(sleep, curator, relevant_rank=1)

    snapshot = dataset_snapshot_create(knowledge_base=embedded_knowledge_base, created_by=curator, heldout_share=0.5)

    assert snapshot.example_count == 2 == snapshot.train_count + snapshot.heldout_count
    assert snapshot.label_ids == sorted([label_a.pk, label_b.pk])
    assert snapshot.curator_ids == [curator.pk]
    example = SnapshotExample.objects.get(snapshot=snapshot, turn=statins)
    top = statins.passages.get(rank=1)
    assert example.example_id == f"turn-{statins.pk}"
    assert [p["text"] for p in example.relevant] == [top.text]
    assert [p["document_id"] for p in example.relevant] == ["d-statins"]
    assert len(example.irrelevant) == 2 and len(example.retrieved) == 3
    assert example.gold_answer == "HMG-CoA reductase." and example.answer_rating == "correct"
    assert not SnapshotExample.objects.filter(turn=unlabelled).exists()
    # the split is the stable hash of the id: the same in a later snapshot (one more label, as
    # a snapshot identical to the latest is refused)
    _judge(unlabelled, curator)
    later = dataset_snapshot_create(knowledge_base=embedded_knowledge_base, heldout_share=0.5)
    assert SnapshotExample.objects.get(snapshot=later, turn=statins).split == example.split
    [as_dataclass] = [e for e in snapshot_dataset_examples(snapshot=snapshot) if e.example_id == example.example_id]
    assert as_dataclass.relevant[0].text == top.text and as_dataclass.gold_answer == "HMG-CoA reductase."


def test_every_copy_of_a_query_lands_on_the_same_side_of_the_split(embedded_knowledge_base, curator):
    questions = [f"Does compound {n} lower cholesterol?" for n in range(12)]
    records = []
    for n, question in enumerate(questions):
        for copy, text in enumerate([question, f"  {question.upper().rstrip('?')} "]):
            records.append(TurnRecord(external_id=f"q{n}-{copy}", query=text, passages=[PassageRecord(text=f"Compound {n} lowers LDL.", score=0.9)]))
    created = turns_ingest(knowledge_base=embedded_knowledge_base, records=records).created
    for turn in Turn.objects.filter(pk__in=created.values()):
        _judge(turn, curator)

    snapshot = dataset_snapshot_create(knowledge_base=embedded_knowledge_base, heldout_share=0.5)

    assert snapshot.split_rule == "query_text" and snapshot.example_count == 24
    splits = {}
    for example in SnapshotExample.objects.filter(snapshot=snapshot).select_related("turn"):
        splits.setdefault(example.turn.external_id.split("-")[0], set()).add(example.split)
    assert all(len(sides) == 1 for sides in splits.values()), splits
    assert {side for sides in splits.values() for side in sides} == {"train", "heldout"}
    assert snapshot.train_count + snapshot.heldout_count == 24 and snapshot.heldout_count % 2 == 0


def test_a_follow_up_is_snapshotted_with_the_query_retrieval_used_the_question_asked_and_the_history(
    knowledge_base, curator
):
    first, children, calcium = conversation_turns(knowledge_base, curator)

    snapshot = dataset_snapshot_create(knowledge_base=knowledge_base, heldout_share=0.5)

    rows = {row.turn_id: row for row in snapshot.examples.all()}
    first_exchange = [{"role": "user", "content": first.query}, {"role": "assistant", "content": first.answer}]
    # the first question: no rewrite, so the query is the question itself and no question is kept
    assert (rows[first.pk].query, rows[first.pk].question, rows[first.pk].history) == (
        "Does vitamin D prevent hip fractures?", "", [SYSTEM_MESSAGE],
    )  # fmt: skip
    # a follow-up: the rewrite retrieval used, the user's words, the conversation before them
    assert (rows[children.pk].query, rows[children.pk].question) == (
        "Does vitamin D prevent hip fractures in children?", "And in children?",
    )  # fmt: skip
    assert rows[children.pk].history == [SYSTEM_MESSAGE, *first_exchange]
    # a wrong rewrite ("vitamin D calcium") gives way to the curator's corrected query
    assert (rows[calcium.pk].query, rows[calcium.pk].question) == (CORRECTED_QUERY, "What about calcium?")
    assert rows[calcium.pk].history == [
        SYSTEM_MESSAGE, *first_exchange,
        {"role": "user", "content": "And in children?"}, {"role": "assistant", "content": "I could not find it."},
    ]  # fmt: skip
    # the split is keyed on the self-contained query ("And in children?" alone would be held out)
    for row in rows.values():
        assert row.split == split_for(split_key(row.query), heldout_share=0.5)
    assert split_for(split_key("And in children?"), heldout_share=0.5) != rows[children.pk].split

    examples = {e.example_id: e for e in snapshot_dataset_examples(snapshot=snapshot)}
    follow_up = examples[f"turn-{children.pk}"]
    assert follow_up.query == children.rewritten_query and follow_up.user_question == "And in children?"
    assert follow_up.history == [ChatMessage(**m) for m in [SYSTEM_MESSAGE, *first_exchange]]
    assert examples[f"turn-{first.pk}"].user_question == first.query


def test_history_as_served_is_the_stored_history_within_servings_budget(settings):
    stored = [
        SYSTEM_MESSAGE,
        {"role": "user", "content": "Does vitamin D prevent hip fractures?"},  # 6 words
        {"role": "assistant", "content": "Yes, by a fifth."},  # 4
        {"role": "user", "content": "And in children?"},  # 3
        {"role": "assistant", "content": "No data."},  # 2
    ]
    assert history_as_served(stored) == [ChatMessage(**m) for m in stored[1:]]  # the default 1500 words
    settings.RAGLOOP_CHAT_HISTORY_TOKENS = 14
    assert history_as_served(stored) == [ChatMessage(**m) for m in stored[3:]]
    settings.RAGLOOP_CHAT_HISTORY_TOKENS = 15
    assert history_as_served(stored) == [ChatMessage(**m) for m in stored[1:]]


def test_a_snapshot_needs_curated_turns(knowledge_base):
    with pytest.raises(InvalidInput, match="no curated turns"):
        dataset_snapshot_create(knowledge_base=knowledge_base)


def _retriever_version(knowledge_base, name, *, space=None):
    return model_version_register(
        knowledge_base=knowledge_base, component=Component.RETRIEVER, artifact_folder=None, name=name,
        embedding_space=space or knowledge_base.live_space, query_model_reference="base:all-MiniLM-L6-v2",
    )


def test_promote_and_roll_back_switch_serving_and_keep_an_audit_log(embedded_knowledge_base, admin_user):
    kb = embedded_knowledge_base
    v1 = _retriever_version(kb, "retriever-v1")
    v2 = _retriever_version(kb, "retriever-v2")
    assert retriever_for(knowledge_base=kb).version == "base"

    model_version_promote(version=v1, actor=admin_user, reason="better nDCG")
    assert retriever_for(knowledge_base=kb).version == "retriever-v1"
    assert turn_ask(knowledge_base=kb, query="statins", k=2).retriever_version == "retriever-v1"
    model_version_promote(version=v2, actor=admin_user)
    v1.refresh_from_db(); v2.refresh_from_db()
    assert (v1.status, v2.status) == ("retired", "live")

    model_version_rollback(knowledge_base=kb, component=Component.RETRIEVER, actor=admin_user, reason="regression")
    v1.refresh_from_db(); v2.refresh_from_db()
    assert (v1.status, v2.status) == ("live", "retired")
    assert retriever_for(knowledge_base=kb).version == "retriever-v1"
    model_version_rollback(knowledge_base=kb, component=Component.RETRIEVER, actor=admin_user)
    assert retriever_for(knowledge_base=kb).version == "base"
    with pytest.raises(Conflict, match="already serves the base"):
        model_version_rollback(knowledge_base=kb, component=Component.RETRIEVER, actor=admin_user)

    log = [(e.action, e.from_version and e.from_version.name, e.to_version and e.to_version.name)
           for e in PromotionEvent.objects.order_by("created_at", "pk")]
    assert log == [
        ("promote", None, "retriever-v1"),
        ("promote", "retriever-v1", "retriever-v2"),
        ("rollback", "retriever-v2", "retriever-v1"),
        ("rollback", "retriever-v1", None),
    ]
    assert ModelVersion.objects.filter(status="live").count() == 0


def test_promotion_writes_what_serves_onto_the_knowledge_base_and_rollback_clears_it(embedded_knowledge_base, admin_user):
    """Serving reads only the knowledge base's live pointers; promotion and rollback write them."""
    kb = embedded_knowledge_base
    base_space = kb.live_space
    # A query-only version: its own query encoder (the base model under another name, so it
    # still encodes) over the base space.
    query_only = model_version_register(
        knowledge_base=kb, component=Component.RETRIEVER, artifact_folder=None, name="retriever-v1",
        embedding_space=base_space, query_model_reference=BASE_MODEL_PATH,
    )  # fmt: skip
    encoder = QueryEncoder.objects.get(knowledge_base=kb, retriever_version="retriever-v1")
    assert (encoder.space, encoder.model_reference) == (base_space, BASE_MODEL_PATH)
    by_name = retriever_for(knowledge_base=kb, retriever_version="retriever-v1")
    assert (by_name.version, by_name.space, by_name.query_model_reference) == ("retriever-v1", base_space, BASE_MODEL_PATH)

    generator = model_version_register(
        knowledge_base=kb, component=Component.GENERATOR, artifact_folder=None, name="generator-v1",
        generator_backend="extractive", generator_model="", generator_adapter_path="kb/generator/1/adapter",
    )  # fmt: skip
    model_version_promote(version=query_only, actor=admin_user)
    model_version_promote(version=generator, actor=admin_user)

    kb = KnowledgeBase.objects.get(pk=kb.pk)
    assert (kb.live_space, kb.live_retriever_version, kb.live_query_model_reference) == (
        base_space, "retriever-v1", BASE_MODEL_PATH,
    )  # fmt: skip
    assert (kb.live_generator_version, kb.live_generator_backend, kb.live_generator_adapter_path) == (
        "generator-v1", "extractive", "kb/generator/1/adapter",
    )  # fmt: skip
    live = retriever_for(knowledge_base=kb)
    assert (live.version, live.query_model_reference) == ("retriever-v1", BASE_MODEL_PATH)
    assert generator_for(knowledge_base=kb)[1] == "generator-v1"
    turn = turn_ask(knowledge_base=kb, query="statins", k=2)
    assert (turn.retriever_version, turn.generator_version) == ("retriever-v1", "generator-v1")

    # The pointers alone decide: a model version row marked live by hand changes nothing.
    ModelVersion.objects.filter(pk=generator.pk).update(status="retired")
    assert generator_for(knowledge_base=kb)[1] == "generator-v1"
    ModelVersion.objects.filter(pk=generator.pk).update(status="live")

    model_version_rollback(knowledge_base=kb, component=Component.RETRIEVER, actor=admin_user)
    model_version_rollback(knowledge_base=kb, component=Component.GENERATOR, actor=admin_user)
    kb = KnowledgeBase.objects.get(pk=kb.pk)
    assert (kb.live_space, kb.live_retriever_version, kb.live_query_model_reference) == (base_space, "", "")
    assert (kb.live_generator_version, kb.live_generator_backend, kb.live_generator_adapter_path) == ("", "", "")
    assert live_version_names(knowledge_base=kb) == {"retriever": "base", "generator": "extractive"}


def test_a_retriever_whose_space_is_still_building_cannot_go_live(embedded_knowledge_base, admin_user):
    kb = embedded_knowledge_base
    building = EmbeddingSpace.objects.create(knowledge_base=kb, retriever_version="retriever-v1", model_reference="x", dimensions=384)
    version = _retriever_version(kb, "retriever-v1", space=building)
    with pytest.raises(Conflict, match="embedded"):
        model_version_promote(version=version, actor=admin_user)
    assert not PromotionEvent.objects.exists()
    assert retriever_for(knowledge_base=kb).version == "base"


def test_a_tampered_artifact_is_refused_at_promotion(embedded_knowledge_base, admin_user, settings, tmp_path):
    settings.RAGLOOP_ARTIFACTS_DIR = tmp_path
    folder = tmp_path / "kb" / "generator-v1"
    folder.mkdir(parents=True)
    (folder / "adapter.bin").write_bytes(b"weights")
    version = model_version_register(
        knowledge_base=embedded_knowledge_base, component=Component.GENERATOR, artifact_folder=folder,
        generator_backend="extractive",
    )
    assert version.artifact_path == "kb/generator-v1" and len(version.artifact_checksum) == 64
    (folder / "adapter.bin").write_bytes(b"tampered")
    with pytest.raises(InvalidInput, match="adapter.bin"):
        model_version_promote(version=version, actor=admin_user)
    version.refresh_from_db()
    assert version.status == "candidate"
