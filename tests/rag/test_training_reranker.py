"""Tests for the cross-encoder reranker: graded pairs (targets, mined negatives filtered against
known positives), training on CrossEncoderTrainer from the packaged MiniLM, reordering held-out
candidates, and cancellation."""

import json
from pathlib import Path

import pytest

from rag.embedding import base_retriever_path
from rag.reranking import Reranker, rerank_order
from rag.training import TrainingCancelled
from rag.training.reranker import (
    RerankerList,
    RerankerPair,
    RerankerTrainingExample,
    reranker_lists,
    reranker_pairs,
    train_reranker,
)

# The support task of test_training_retriever: for every question an "echo" page repeats the
# question's words without answering it, and a fact page answers it in other words. Curators
# judged the fact page relevant, the echo page not relevant, and the product's answer to
# another question partly relevant. The pattern carries over to products never trained on.
PRODUCTS = [
    "Aurora kettle", "Basalt drill", "Cobalt router", "Dune tent", "Ember heater", "Fjord kayak",
    "Glacier cooler", "Harbor lamp", "Iris camera", "Juniper blender", "Kestrel bike", "Lumen monitor",
    "Meadow mower", "Nimbus drone", "Onyx speaker", "Pine desk", "Quartz watch", "Raven headset",
    "Sierra stove", "Tundra jacket", "Umber backpack", "Vale printer", "Willow chair", "Zephyr fan",
]  # fmt: skip
TEMPLATES = [
    (
        "How long is the warranty on the {p}?",
        "Manufacturing defects in the {p} are repaired free of charge for {n} years after purchase.",
        "Warranty on the {p}: how long is it? Customers often ask how long the warranty on the {p} is.",
    ),
    (
        "How much does the {p} weigh?",
        "On the scale the {p} comes in at {n} kilograms without its packaging.",
        "The {p} weight: how much does the {p} weigh? This is a frequent question about the {p}.",
    ),
    (
        "What is the battery life of the {p}?",
        "A full charge keeps the {p} running for {n} hours of normal use.",
        "Battery life of the {p}: what is the battery life of the {p}? Many users wonder about the {p} battery.",
    ),
    (
        "Where is the {p} manufactured?",
        "Every {p} is assembled in plant number {n} near Lyon.",
        "Where the {p} is manufactured is a common question; the {p} manufacturing location is often searched.",
    ),
]


def _example(index: int, product: str) -> RerankerTrainingExample:
    question, fact, echo = TEMPLATES[index % 4]
    other_fact = TEMPLATES[(index + 1) % 4][1]
    return RerankerTrainingExample(
        query=question.format(p=product),
        relevant=[fact.format(p=product, n=index + 2)],
        partly=[other_fact.format(p=product, n=index + 3)],
        not_relevant=[echo.format(p=product)],
        # First-stage candidates: another product's echo page, and the fact page itself (a known
        # positive the filter must drop).
        mined=[TEMPLATES[index % 4][2].format(p=PRODUCTS[(index + 5) % len(PRODUCTS)]), fact.format(p=product, n=index + 2)],
    )


EXAMPLES = [_example(index, product) for index, product in enumerate(PRODUCTS)]
TRAIN, HELD_OUT = EXAMPLES[:16], EXAMPLES[16:]
BASE = base_retriever_path()


def mean_reciprocal_rank(reranker: Reranker, examples) -> float:
    """MRR of each held-out example's relevant passage among its judged candidates."""
    reciprocal_ranks = []
    for example in examples:
        candidates = [*example.not_relevant, *example.partly, *example.relevant]
        order = rerank_order(reranker.scores(example.query, candidates))
        reciprocal_ranks.append(1 / (1 + order.index(len(candidates) - 1)))
    return sum(reciprocal_ranks) / len(reciprocal_ranks)


def test_pairs_carry_graded_targets_and_drop_mined_positives():
    pairs, counts = reranker_pairs([EXAMPLES[0]])
    by_passage = {pair.passage: pair.label for pair in pairs}
    example = EXAMPLES[0]
    assert by_passage[example.relevant[0]] == 1.0
    assert by_passage[example.partly[0]] == 0.5
    assert by_passage[example.not_relevant[0]] == 0.0
    assert by_passage[example.mined[0]] == 0.0
    assert len(pairs) == 4  # the mined copy of the relevant page is not a second, negative pair
    assert counts == {"relevant": 1, "partly": 1, "not_relevant": 1, "mined": 1, "mined_dropped_as_positive": 1}


def test_pairs_of_one_query_in_two_examples_keep_the_higher_grade_once():
    first = RerankerTrainingExample(query="Is it safe?", relevant=["Yes, tested."], not_relevant=["Colour: red."])
    second = RerankerTrainingExample(query="is it  SAFE?", not_relevant=["Yes,  tested."], mined=["Colour: red.", "Ships in May."])
    pairs, counts = reranker_pairs([first, second])
    assert sorted((p.passage, p.label) for p in pairs) == [("Colour: red.", 0.0), ("Ships in May.", 0.0), ("Yes, tested.", 1.0)]
    assert counts["mined_dropped_as_positive"] == 0  # "Colour: red." was judged (not relevant): its grade stands
    repeated, _ = reranker_pairs([RerankerTrainingExample(query="q", relevant=["a"], repeats=3)])
    assert repeated == [RerankerPair("q", "a", 1.0)] * 3


def test_lists_group_a_query_s_pairs_and_drop_lists_with_nothing_to_rank():
    pairs = [
        RerankerPair("Is it safe?", "Yes, tested.", 1.0),
        RerankerPair("Ships when?", "In May.", 0.5),
        RerankerPair("is it  SAFE?", "Colour: red.", 0.0),  # the same query, written differently
        RerankerPair("Ships when?", "Ships by sea.", 0.0),
        RerankerPair("Only negatives?", "No.", 0.0),  # no positive: nothing to learn
        RerankerPair("Only positives?", "Yes.", 1.0),  # nothing to rank below it
        RerankerPair("Only positives?", "Indeed.", 1.0),
    ]
    assert reranker_lists(pairs) == [
        RerankerList("Is it safe?", ["Yes, tested.", "Colour: red."], [1.0, 0.0]),
        RerankerList("Ships when?", ["In May.", "Ships by sea."], [0.5, 0.0]),
    ]
    # An example repeated three times (its pairs three times over) is three copies of its list.
    repeated, _ = reranker_pairs([RerankerTrainingExample(query="q", relevant=["a"], mined=["b"], repeats=3)])
    assert reranker_lists(repeated) == [RerankerList("q", ["a", "b"], [1.0, 0.0])] * 3


def test_an_unknown_loss_or_nothing_to_rank_is_refused_before_training(tmp_path: Path):
    with pytest.raises(ValueError, match="loss 'listnet' is unknown"):
        train_reranker(base_model_path=BASE, examples=TRAIN, output_path=tmp_path / "r", loss="listnet")
    only_positive = [RerankerTrainingExample(query="q", relevant=["a", "b"])]
    with pytest.raises(ValueError, match="No query has both"):
        train_reranker(base_model_path=BASE, examples=only_positive, output_path=tmp_path / "r", loss="lambda")
    assert not (tmp_path / "r").exists()


def test_rerank_order_is_by_descending_score_with_ties_in_first_stage_order():
    assert rerank_order([0.1, 0.9, 0.5, 0.9]) == [1, 3, 2, 0]
    assert rerank_order([]) == []


def test_training_needs_a_positive(tmp_path: Path):
    with pytest.raises(ValueError, match="no positive"):
        train_reranker(
            base_model_path=BASE, examples=[RerankerTrainingExample(query="q", not_relevant=["x"])], output_path=tmp_path / "r"
        )
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_reranker_trains_to_rank_held_out_positives_higher(tmp_path: Path):
    fractions = []
    result = train_reranker(
        base_model_path=BASE,
        examples=TRAIN,
        output_path=tmp_path / "reranker",
        epochs=1,
        batch_size=8,
        learning_rate=1e-4,
        warmup_ratio=0.0,
        device="cpu",
        progress=lambda fraction, metrics: fractions.append(fraction),
    )
    assert result.steps == 8  # 16 queries x 4 pairs, batches of 8
    assert result.pair_counts["mined_dropped_as_positive"] == 16
    assert fractions and fractions[-1] == pytest.approx(1.0)
    saved = json.loads((tmp_path / "reranker" / "reranker.json").read_text())
    assert saved["loss"] == "BinaryCrossEntropyLoss" and saved["targets"]["partly"] == 0.5
    trained = Reranker(tmp_path / "reranker", device="cpu")
    # The base bi-encoder loaded as a cross-encoder has an untrained head: its order is arbitrary.
    base = Reranker(BASE, device="cpu")
    trained_mrr, base_mrr = mean_reciprocal_rank(trained, HELD_OUT), mean_reciprocal_rank(base, HELD_OUT)
    # Seeded on CPU: trained 0.81, base 0.60 when written.
    assert trained_mrr >= base_mrr + 0.1, (trained_mrr, base_mrr)
    assert trained_mrr >= 0.75, (trained_mrr, base_mrr)


@pytest.mark.slow
def test_the_listwise_reranker_trains_to_rank_held_out_positives_higher(tmp_path: Path):
    result = train_reranker(
        base_model_path=BASE,
        examples=TRAIN,
        output_path=tmp_path / "reranker",
        epochs=2,
        batch_size=4,
        learning_rate=1e-4,
        warmup_ratio=0.0,
        device="cpu",
        loss="lambda",
    )
    assert result.steps == 8  # 16 query lists of 4 passages, 4 lists a batch, 2 epochs
    saved = json.loads((tmp_path / "reranker" / "reranker.json").read_text())
    assert saved["loss"] == "LambdaLoss"
    trained_mrr = mean_reciprocal_rank(Reranker(tmp_path / "reranker", device="cpu"), HELD_OUT)
    base_mrr = mean_reciprocal_rank(Reranker(BASE, device="cpu"), HELD_OUT)
    assert trained_mrr >= base_mrr + 0.1, (trained_mrr, base_mrr)
    assert trained_mrr >= 0.75, (trained_mrr, base_mrr)


@pytest.mark.slow
def test_training_stops_when_asked_and_saves_nothing(tmp_path: Path):
    with pytest.raises(TrainingCancelled):
        train_reranker(
            base_model_path=BASE, examples=TRAIN[:4], output_path=tmp_path / "reranker", batch_size=4, device="cpu",
            should_stop=lambda: True,
        )  # fmt: skip
    assert not (tmp_path / "reranker").exists()
    assert not any(tmp_path.iterdir())
