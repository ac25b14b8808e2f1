"""Repeating examples tagged with a failure (rag.datasets.example_repeats) and contrastive pairs
of a repeated example (rag.training.retriever.contrastive_pairs): plain data, no database."""

import pytest

from rag.datasets import DatasetExample, example_repeats, examples_repeated
from rag.training.retriever import RetrievalTrainingExample, contrastive_pairs


def test_only_examples_with_a_weighted_tag_are_repeated():
    examples = [DatasetExample(example_id="a", query="a", failure_tags=["retrieval-miss"]),
                DatasetExample(example_id="b", query="b", failure_tags=("stale-document",)),
                DatasetExample(example_id="c", query="c")]
    assert examples[0].failure_tags == ("retrieval-miss",)
    assert [e.example_id for e in examples_repeated(examples, weighted_tags={"retrieval-miss"}, repeats=3)] == ["a"] * 3 + ["b", "c"]
    assert example_repeats(examples[1], weighted_tags=(), repeats=5) == 1
    with pytest.raises(ValueError):
        example_repeats(examples[0], weighted_tags={"retrieval-miss"}, repeats=0)


def test_a_repeated_examples_pairs_come_that_many_times_and_two_curators_still_make_one_pair():
    pairs, known = contrastive_pairs([
        RetrievalTrainingExample(query="q1", positives=["p1", "p2"], hard_negatives=["n1"], repeats=2),
        RetrievalTrainingExample(query="q1", positives=["p1"]),  # a second curator's label: no extra pair
        RetrievalTrainingExample(query="q2", positives=["p3"]),
    ], {"q2": ["m1"]})
    assert [(p.query, p.positive, p.negatives) for p in pairs] == [
        ("q1", "p1", ("n1",)), ("q1", "p1", ("n1",)), ("q1", "p2", ("n1",)), ("q1", "p2", ("n1",)), ("q2", "p3", ("m1",)),
    ]
    assert known == {"q1": {"p1", "p2"}, "q2": {"p3"}}
