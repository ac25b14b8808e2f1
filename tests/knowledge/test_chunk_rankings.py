"""Batched retrieval for background work: the same ranking as passages_retrieve, in one statement."""

from django.db import connection
from django.test.utils import CaptureQueriesContext

from knowledge.selectors import chunk_rankings_many, passages_retrieve, retriever_for

QUESTIONS = ["Which enzyme do statins inhibit?", "Is it good for you?", "What does sleep do to memory?"]


def test_chunk_rankings_many_ranks_as_passages_retrieve_does_in_one_statement(embedded_knowledge_base):
    live = retriever_for(knowledge_base=embedded_knowledge_base)
    with CaptureQueriesContext(connection) as captured:
        rankings = chunk_rankings_many(space=live.space, queries=QUESTIONS, k=3)
    assert sum("CROSS JOIN LATERAL" in q["sql"] for q in captured.captured_queries) == 1
    for question, ranking in zip(QUESTIONS, rankings):
        one = passages_retrieve(space=live.space, query=question, k=3)
        assert [d for d, _ in ranking] == [p.document_id for p in one]
        assert [round(s, 5) for _, s in ranking] == [round(p.score, 5) for p in one]
    assert chunk_rankings_many(space=live.space, queries=[], k=3) == []
