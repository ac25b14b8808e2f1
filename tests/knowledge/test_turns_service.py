"""turn_ask logs what it served; turns_ingest is idempotent by external id; feedback."""

from datetime import datetime, timezone

import pytest

from knowledge.errors import InvalidInput, NotFound, UpstreamError
from knowledge.models import KnowledgeBase, RetrievedPassage, Turn
from knowledge.selectors import embedding_space_for, passages_retrieve
from knowledge.services.turns import (
    PassageRecord,
    TurnRecord,
    turn_ask,
    turn_feedback_set,
    turns_ingest,
)


def test_ask_stores_the_turn_with_the_passages_it_served(embedded_knowledge_base):
    turn = turn_ask(knowledge_base=embedded_knowledge_base, query="Which enzyme do statins inhibit?", k=3)

    assert turn.source == Turn.Source.SERVED
    assert "HMG-CoA reductase" in turn.answer
    assert (turn.retriever_version, turn.generator_version) == ("base", "extractive")
    assert turn.latency_ms > 0
    passages = list(turn.passages.order_by("rank"))
    assert [p.rank for p in passages] == [1, 2, 3]
    assert passages[0].source_id == "d-statins"
    assert passages[0].document.external_id == "d-statins"
    assert passages[0].text == passages[0].chunk.text
    assert passages[0].score >= passages[1].score >= passages[2].score
    # the stored passages are exactly what retrieval returns for that query
    expected = passages_retrieve(space=embedded_knowledge_base.live_space, query="Which enzyme do statins inhibit?", k=3)
    assert [p.chunk_id for p in passages] == [p.chunk_id for p in expected]


def test_a_failing_generator_stores_nothing_and_says_why(embedded_knowledge_base):
    KnowledgeBase.objects.filter(pk=embedded_knowledge_base.pk).update(generator_backend="hf", generator_model="/no/such/model")
    embedded_knowledge_base.refresh_from_db()
    with pytest.raises(UpstreamError, match="hf:/no/such/model"):
        turn_ask(knowledge_base=embedded_knowledge_base, query="statins?", k=2)
    assert Turn.objects.count() == 0


def test_unknown_or_unready_retriever_versions_are_refused(embedded_knowledge_base):
    with pytest.raises(NotFound, match="'v9'"):
        embedding_space_for(knowledge_base=embedded_knowledge_base, retriever_version="v9")
    candidate = embedded_knowledge_base.embedding_spaces.create(
        retriever_version="v2", model_reference="base:all-MiniLM-L6-v2", dimensions=384, status="building"
    )
    with pytest.raises(InvalidInput, match="building"):
        embedding_space_for(knowledge_base=embedded_knowledge_base, retriever_version=candidate.retriever_version)


def _record(external_id: str, **overrides) -> TurnRecord:
    values = {
        "external_id": external_id,
        "query": f"question {external_id}",
        "answer": "an answer",
        "passages": [PassageRecord(text="Statins inhibit HMG-CoA reductase.", source_id="d-statins", score=0.8),
                     PassageRecord(text="An outside passage.", source_id="elsewhere-1", score=0.4)],
        "feedback": -1,
    }
    return TurnRecord(**{**values, **overrides})


def test_ingesting_turns_is_idempotent_by_external_id(embedded_knowledge_base):
    first = turns_ingest(knowledge_base=embedded_knowledge_base, records=[_record("a"), _record("b")])
    assert set(first.created) == {"a", "b"} and first.existing == {}

    second = turns_ingest(knowledge_base=embedded_knowledge_base, records=[_record("b", query="changed"), _record("c")])
    assert set(second.created) == {"c"}
    assert second.existing == {"b": first.created["b"]}
    assert Turn.objects.count() == 3
    assert Turn.objects.get(external_id="b").query == "question b"  # a known id is left as it was
    assert RetrievedPassage.objects.count() == 6


def test_ingested_passages_link_to_known_documents_and_keep_their_text(embedded_knowledge_base):
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    result = turns_ingest(knowledge_base=embedded_knowledge_base, records=[_record("x", created_at=when)])
    turn = Turn.objects.get(pk=result.created["x"])
    assert turn.source == Turn.Source.INGESTED
    assert turn.created_at == when
    assert turn.feedback == -1
    known, outside = turn.passages.order_by("rank")
    assert (known.rank, known.document.external_id, known.score) == (1, "d-statins", 0.8)
    assert (outside.rank, outside.document, outside.source_id, outside.text) == (2, None, "elsewhere-1", "An outside passage.")


@pytest.mark.parametrize(
    "records, message",
    [
        ([], "No turns"),
        ([_record("a"), _record("a")], "more than once"),
        ([_record("a", query="  ")], "empty query"),
        ([_record("a", feedback=3)], "feedback"),
    ],
)
def test_bad_batches_are_refused_whole(embedded_knowledge_base, records, message):
    with pytest.raises(InvalidInput, match=message):
        turns_ingest(knowledge_base=embedded_knowledge_base, records=records)
    assert Turn.objects.count() == 0


def test_feedback_is_set_and_cleared(embedded_knowledge_base):
    turn = turn_ask(knowledge_base=embedded_knowledge_base, query="coffee and mortality", k=2)
    turn_feedback_set(turn=turn, feedback=-1, comment="wrong study")
    turn.refresh_from_db()
    assert (turn.feedback, turn.feedback_comment) == (-1, "wrong study")
    turn_feedback_set(turn=turn, feedback=None)
    turn.refresh_from_db()
    assert (turn.feedback, turn.feedback_comment) == (None, "")
    with pytest.raises(InvalidInput):
        turn_feedback_set(turn=turn, feedback=2)
