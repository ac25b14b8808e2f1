"""Retrieval and answer metrics against values computed by hand (and, for nDCG, by scikit-learn)."""

import json
import math

import pytest

from rag.generation import ContextPassage, ExtractiveGenerator
from rag.metrics import (
    answer_report,
    exact_match,
    groundedness,
    mrr_at_k,
    ndcg_at_k,
    normalize_answer,
    paired_bootstrap_interval,
    recall_at_k,
    retrieval_report,
    token_f1,
)

LOG2_3 = math.log2(3)  # the discount at rank 2: log2(2 + 1) ≈ 1.585

# --- recall@k ---------------------------------------------------------------------------------


def test_recall_counts_relevant_items_in_the_top_k():
    # relevant {a, b, d}; top 3 of [a, x, b, c] = {a, x, b} holds a and b -> 2/3
    assert recall_at_k(["a", "x", "b", "c"], {"a", "b", "d"}, k=3) == pytest.approx(2 / 3)
    # top 1 = {a} -> 1/3
    assert recall_at_k(["a", "x", "b", "c"], {"a", "b", "d"}, k=1) == pytest.approx(1 / 3)
    # k beyond the list: all of a, b found, d never -> 2/3
    assert recall_at_k(["a", "x", "b", "c"], {"a", "b", "d"}, k=100) == pytest.approx(2 / 3)


def test_recall_counts_a_repeated_id_once_and_lets_later_items_move_up():
    # [x, a, x, b, c] -> distinct [x, a, b, c]; top 3 = {x, a, b}: 2 of {a, b, d} -> 2/3.
    # (Cutting before removing repeats would give {x, a} -> 1/3.)
    ranked = ["x", "a", "x", "b", "c"]
    assert recall_at_k(ranked, {"a", "b", "d"}, k=3) == pytest.approx(2 / 3)
    # [a, a, a] finds a once: 1 of {a, b} -> 1/2, never 3/2
    assert recall_at_k(["a", "a", "a"], {"a", "b"}, k=3) == pytest.approx(1 / 2)


def test_recall_is_undefined_without_relevant_items():
    assert recall_at_k(["a", "b"], set(), k=5) is None


def test_recall_of_an_empty_ranking_is_zero():
    assert recall_at_k([], {"a"}, k=5) == 0.0


def test_k_must_be_positive():
    with pytest.raises(ValueError):
        recall_at_k(["a"], {"a"}, k=0)
    with pytest.raises(ValueError):
        mrr_at_k(["a"], {"a"}, k=0)
    with pytest.raises(ValueError):
        ndcg_at_k(["a"], {"a": 1}, k=0)


# --- MRR@k ------------------------------------------------------------------------------------


def test_mrr_is_the_reciprocal_rank_of_the_first_relevant_item():
    # first relevant (a) at rank 3 -> 1/3
    assert mrr_at_k(["x", "y", "a", "b"], {"a", "b"}) == pytest.approx(1 / 3)
    assert mrr_at_k(["a", "x"], {"a"}) == 1.0
    # k = 2 stops before rank 3 -> 0
    assert mrr_at_k(["x", "y", "a"], {"a"}, k=2) == 0.0
    assert mrr_at_k(["x", "y"], {"a"}) == 0.0


def test_mrr_ranks_count_each_id_once():
    # [x, x, a] -> distinct [x, a]: a at rank 2 -> 1/2
    assert mrr_at_k(["x", "x", "a"], {"a"}) == pytest.approx(1 / 2)


def test_mrr_is_undefined_without_relevant_items():
    assert mrr_at_k(["a"], set()) is None


# --- nDCG@k -----------------------------------------------------------------------------------


def test_ndcg_by_hand_with_graded_relevance():
    # ranked [a, b, c], relevance {b: 1, c: 2}, linear gain rel / log2(rank + 1):
    #   DCG  = 0/log2(2) + 1/log2(3) + 2/log2(4) = 0 + 0.63093 + 1.0   = 1.63093
    #   ideal order [c, b]: IDCG = 2/log2(2) + 1/log2(3) = 2 + 0.63093 = 2.63093
    #   nDCG = 1.63093 / 2.63093 = 0.61991
    expected = (1 / LOG2_3 + 2 / 2) / (2 + 1 / LOG2_3)
    assert expected == pytest.approx(0.61991, abs=1e-5)
    assert ndcg_at_k(["a", "b", "c"], {"b": 1, "c": 2}) == pytest.approx(expected)

    # k = 2: DCG@2 = 0 + 1/log2(3) = 0.63093; IDCG@2 = 2.63093 -> 0.23981
    assert ndcg_at_k(["a", "b", "c"], {"b": 1, "c": 2}, k=2) == pytest.approx(0.23981, abs=1e-5)


def test_ndcg_ideal_includes_relevant_items_the_retriever_missed():
    # relevance {a: 1, z: 1}, z never retrieved; ranked [x, a]:
    #   DCG = 1/log2(3) = 0.63093; IDCG = 1/log2(2) + 1/log2(3) = 1.63093 -> 0.38685
    assert ndcg_at_k(["x", "a"], {"a": 1, "z": 1}) == pytest.approx(0.38685, abs=1e-5)


def test_ndcg_of_the_ideal_order_is_one_and_nonpositive_judgments_gain_nothing():
    assert ndcg_at_k(["c", "b", "a"], {"a": 0, "b": 1, "c": 2}) == pytest.approx(1.0)
    # a judged -1 or 0 counts like an unjudged item: [n, b] with {n: -1, b: 1} -> 1/log2(3)
    assert ndcg_at_k(["n", "b"], {"n": -1, "b": 1}) == pytest.approx(1 / LOG2_3)


def test_ndcg_counts_a_repeated_id_once():
    # [b, b, c] -> distinct [b, c]: the second b earns nothing and c moves up to rank 2.
    #   DCG = 1/1 + 1/log2(3); ideal for {b: 1, c: 1} is the same -> 1.0
    assert ndcg_at_k(["b", "b", "c"], {"b": 1, "c": 1}) == pytest.approx(1.0)
    # [a, a, b] with {b: 1}: b at rank 2 -> (1/log2(3)) / 1 = 0.63093
    assert ndcg_at_k(["a", "a", "b"], {"b": 1}) == pytest.approx(1 / LOG2_3)


def test_ndcg_is_undefined_without_positive_judgments():
    assert ndcg_at_k(["a"], {}) is None
    assert ndcg_at_k(["a"], {"a": 0}) is None


@pytest.mark.parametrize(
    ("ranked", "relevance", "k"),
    [
        (["a", "b", "c"], {"b": 1, "c": 2}, 10),
        (["d1", "d2", "d3", "d4", "d5", "d6"], {"d1": 3, "d3": 2, "d4": 1, "d6": 2}, 3),
        (["d1", "d2", "d3", "d4", "d5", "d6"], {"d1": 3, "d3": 2, "d4": 1, "d6": 2}, 5),
        (["d2", "d5", "d6", "d1"], {"d1": 3, "d3": 2, "d6": 2}, 10),
    ],
)
def test_ndcg_matches_scikit_learn(ranked, relevance, k):
    # scikit-learn's ndcg_score uses the same linear gain and log2(rank + 1) discount; its ideal
    # order only knows the items it is given, so judged items the ranking missed are appended
    # below rank k (after unjudged filler), where they count for the ideal order only.
    metrics = pytest.importorskip("sklearn.metrics")
    filler = [f"unjudged-{number}" for number in range(max(0, k - len(ranked)))]
    items = ranked + filler + [item for item in relevance if item not in ranked]
    true_relevance = [[relevance.get(item, 0) for item in items]]
    scores = [[len(items) - position for position in range(len(items))]]

    assert ndcg_at_k(ranked, relevance, k=k) == pytest.approx(metrics.ndcg_score(true_relevance, scores, k=k))


def test_ndcg_matches_the_direct_formula_on_a_longer_ranking():
    ranked = ["d1", "d2", "d3", "d4", "d5", "d6"]
    relevance = {"d1": 3, "d3": 2, "d4": 1, "d6": 2, "d9": 1}
    dcg = 3 / math.log2(2) + 2 / math.log2(4) + 1 / math.log2(5) + 2 / math.log2(7)
    ideal = 3 / math.log2(2) + 2 / math.log2(3) + 2 / math.log2(4) + 1 / math.log2(5) + 1 / math.log2(6)

    assert ndcg_at_k(ranked, relevance) == pytest.approx(dcg / ideal)


# --- retrieval_report -------------------------------------------------------------------------


def test_retrieval_report_means_and_per_query_values():
    runs = {
        "q1": ["a", "b", "c"],
        "q2": ["x", "y"],
        "q3": ["a"],  # no judgments: ignored
    }
    qrels = {
        "q1": {"b": 1, "c": 2},
        "q2": {"y": 1, "x": 0},
        "q4": {"z": 1},  # judged but not in the run: an empty ranking, all zeros
        "q5": {"w": 0},  # nothing relevant: skipped
    }
    report = retrieval_report(runs=runs, qrels=qrels)

    # q1: recall@1 0 ([a]), @5 1, @10 1; MRR 1/2 (b at rank 2); nDCG 0.61991 (hand-computed above)
    # q2: recall@1 0, @5 1, @10 1; MRR 1/2; nDCG = (1/log2(3)) / 1 = 0.63093
    # q4: all 0
    q1_ndcg = (1 / LOG2_3 + 1) / (2 + 1 / LOG2_3)
    assert report["per_query"] == {
        "q1": pytest.approx({"recall@1": 0.0, "recall@5": 1.0, "recall@10": 1.0, "mrr@10": 0.5, "ndcg@10": q1_ndcg}),
        "q2": pytest.approx({"recall@1": 0.0, "recall@5": 1.0, "recall@10": 1.0, "mrr@10": 0.5, "ndcg@10": 1 / LOG2_3}),
        "q4": {"recall@1": 0.0, "recall@5": 0.0, "recall@10": 0.0, "mrr@10": 0.0, "ndcg@10": 0.0},
    }
    # means over the 3 evaluated queries: recall@5 = 2/3, MRR = 1/3, nDCG = (0.61991 + 0.63093) / 3 = 0.41695
    assert report["queries"] == 3
    assert report["skipped"] == ["q5"]
    assert report["mean"] == pytest.approx(
        {"recall@1": 0.0, "recall@5": 2 / 3, "recall@10": 2 / 3, "mrr@10": 1 / 3, "ndcg@10": (q1_ndcg + 1 / LOG2_3) / 3}
    )
    assert report["mean"]["ndcg@10"] == pytest.approx(0.41695, abs=1e-5)
    json.dumps(report)  # stored as a model version's metrics


def test_retrieval_report_with_other_cutoffs_and_nothing_to_evaluate():
    report = retrieval_report(runs={"q1": ["a", "b"]}, qrels={"q1": {"b": 1}}, ks=(1, 2), rank_cutoff=1)
    assert report["mean"] == {"recall@1": 0.0, "recall@2": 1.0, "mrr@1": 0.0, "ndcg@1": 0.0}

    empty = retrieval_report(runs={}, qrels={})
    assert empty["queries"] == 0
    assert empty["mean"] == {"recall@1": None, "recall@5": None, "recall@10": None, "mrr@10": None, "ndcg@10": None}


# --- Answers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The  Eiffel Tower!", "eiffel tower"),
        ("An apple, a day.", "apple day"),
        ("Theory of the case", "theory of case"),  # "the" inside a word stays
        ("  U.S.A.  ", "usa"),
        ("", ""),
    ],
)
def test_normalize_answer_follows_squad(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_ignores_case_articles_and_punctuation_and_takes_the_best_gold():
    assert exact_match("the Eiffel tower.", ["Eiffel Tower"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0
    assert exact_match("Paris", ["Lyon", "paris!"]) == 1.0


def test_token_f1_by_hand():
    # pred [paris, france], gold [paris]: 1 common; P = 1/2, R = 1/1, F1 = 2·(1/2·1)/(3/2) = 2/3
    assert token_f1("Paris, France", ["Paris"]) == pytest.approx(2 / 3)
    # gold 1 "1887": nothing common -> 0; gold 2 "the year 1889" -> [year, 1889] vs [in, 1889]:
    # P = 1/2, R = 1/2, F1 = 1/2; the best gold counts -> 0.5
    assert token_f1("in 1889", ["1887", "the year 1889"]) == pytest.approx(0.5)
    # pred "the cat the cat sat" -> [cat, cat, sat]; gold "a cat sat on the mat" -> [cat, sat, on, mat]
    # common: cat min(2, 1) = 1, sat 1 -> 2; P = 2/3, R = 2/4, F1 = 2·(1/3)/(7/6) = 4/7
    assert token_f1("the cat the cat sat", ["a cat sat on the mat"]) == pytest.approx(4 / 7)
    assert token_f1("Eiffel Tower", ["the Eiffel Tower"]) == 1.0


def test_answers_that_normalise_to_nothing_follow_squad():
    # both sides empty after normalisation -> 1; only one side -> 0
    assert token_f1("...", ["The"]) == 1.0
    assert exact_match("...", ["The"]) == 1.0
    assert token_f1("", ["Paris"]) == 0.0
    assert exact_match("", ["Paris"]) == 0.0


def test_answer_metrics_are_undefined_without_a_gold_answer():
    assert exact_match("Paris", []) is None
    assert token_f1("Paris", []) is None
    assert token_f1("Paris", ["", "   "]) is None


# --- Groundedness -----------------------------------------------------------------------------


def test_groundedness_by_hand():
    passage = "In elderly adults, daily vitamin D reduced the rate of hip fractures by a fifth."
    # answer tokens [vitamin, d, reduces, hip, fractures] ("[1]" ignored); "reduces" is not in the
    # passage ("reduced" is) -> 4/5
    assert groundedness("Vitamin D reduces hip fractures [1].", [passage]) == pytest.approx(0.8)
    # each token position counts: [paris, paris, berlin], only berlin supported -> 1/3
    assert groundedness("Paris, Paris, Berlin", ["Berlin is the capital."]) == pytest.approx(1 / 3)
    # tokens may come from different passages
    assert groundedness("Paris and Berlin", ["Paris is big.", "Berlin and Bonn."]) == 1.0


def test_groundedness_of_an_empty_answer_or_no_passages_is_zero():
    assert groundedness("", ["anything"]) == 0.0
    assert groundedness("The.", ["the"]) == 0.0  # nothing left after normalisation
    assert groundedness("Paris", []) == 0.0


def test_an_extractive_answer_is_fully_grounded():
    passages = [
        ContextPassage(text="Statins inhibit HMG-CoA reductase. Muscle pain is a known side effect."),
        ContextPassage(text="Caffeine blocks adenosine receptors in the brain."),
    ]
    answer = ExtractiveGenerator().generate(query="What do statins inhibit?", passages=passages)

    assert "[1]" in answer.text
    assert groundedness(answer.text, [passage.text for passage in passages]) == 1.0


# --- answer_report ----------------------------------------------------------------------------


def test_answer_report_means_and_per_query_values():
    report = answer_report(
        predictions={"q1": "Eiffel Tower", "q2": "Paris, France", "q3": "something"},
        golds={"q1": ["the Eiffel Tower"], "q2": ["Paris"], "q4": ["Berlin"]},
        passages={"q1": ["The Eiffel Tower is in Paris."], "q2": ["Paris is the capital of France."]},
    )

    # q1: EM 1, F1 1, groundedness [eiffel, tower] both in the passage -> 1
    # q2: EM 0, F1 2/3 (by hand above), groundedness [paris, france] -> 1
    # q3: no gold -> EM/F1 None; no passages -> groundedness None
    # q4: gold but no prediction -> an empty answer: EM 0, F1 0; groundedness None
    assert report["per_query"] == {
        "q1": {"exact_match": 1.0, "f1": 1.0, "groundedness": 1.0},
        "q2": {"exact_match": 0.0, "f1": pytest.approx(2 / 3), "groundedness": 1.0},
        "q3": {"exact_match": None, "f1": None, "groundedness": None},
        "q4": {"exact_match": 0.0, "f1": 0.0, "groundedness": None},
    }
    # means skip None: EM (1 + 0 + 0)/3 = 1/3; F1 (1 + 2/3 + 0)/3 = 5/9; groundedness (1 + 1)/2 = 1
    assert report["queries"] == 4
    assert report["counted"] == {"exact_match": 3, "f1": 3, "groundedness": 2}
    assert report["mean"] == pytest.approx({"exact_match": 1 / 3, "f1": 5 / 9, "groundedness": 1.0})
    json.dumps(report)


def test_answer_report_without_passages_has_no_groundedness():
    report = answer_report(predictions={"q1": "Paris"}, golds={"q1": ["Paris"]})
    assert report["mean"] == {"exact_match": 1.0, "f1": 1.0, "groundedness": None}
    assert report["counted"]["groundedness"] == 0


def test_paired_bootstrap_interval_is_seeded_paired_and_skips_unscored_queries():
    candidate = {"a": 1.0, "b": 0.5, "c": 0.0, "d": None}
    baseline = {"a": 0.5, "b": 0.5, "c": 0.5, "d": 1.0, "e": 0.0}
    interval = paired_bootstrap_interval(candidate, baseline, seed=3)
    # a, b, c are scored on both sides: deltas +0.5, 0, -0.5
    assert interval["queries"] == 3 and interval["delta"] == pytest.approx(0.0)
    assert interval == paired_bootstrap_interval(candidate, baseline, seed=3)
    assert -0.5 <= interval["low"] < 0 < interval["high"] <= 0.5
    # The same change on every query: no spread at all.
    constant = paired_bootstrap_interval({"a": 0.75, "b": 0.5}, {"a": 0.5, "b": 0.25})
    assert (constant["low"], constant["delta"], constant["high"]) == pytest.approx((0.25, 0.25, 0.25))
    assert paired_bootstrap_interval({"a": None}, {"a": 1.0}) is None
    # A wider confidence gives a wider interval.
    narrow = paired_bootstrap_interval(candidate, baseline, confidence=0.5)
    assert narrow["high"] - narrow["low"] < interval["high"] - interval["low"]
