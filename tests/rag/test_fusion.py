"""rag.fusion on cases computed by hand."""

import pytest

from rag.fusion import RRF_K, min_max_normalise, reciprocal_rank_fusion, weighted_score_fusion


def test_rrf_sums_reciprocal_ranks_with_k_60_and_breaks_ties_by_first_appearance():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "d", "a"]])
    assert RRF_K == 60
    # a: 1/61 + 1/63, c: 1/63 + 1/61 (a tie: a is read first), b: 1/62, d: 1/62 (b read first)
    assert [item for item, _ in fused] == ["a", "c", "b", "d"]
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / 61 + 1 / 63)
    assert scores["c"] == pytest.approx(1 / 61 + 1 / 63)
    assert scores["b"] == pytest.approx(1 / 62)
    assert scores["d"] == pytest.approx(1 / 62)


def test_rrf_with_a_small_k_lets_agreement_beat_a_single_first_place():
    # k = 1: a = 1/2, b = 1/3 + 1/2
    assert reciprocal_rank_fusion([["a", "b"], ["b"]], k=1) == [("b", pytest.approx(5 / 6)), ("a", pytest.approx(0.5))]


def test_rrf_weights_and_repeats():
    # weights 2 and 1, k = 0: a = 2/1, b = 2/2 + 1/1 = 2 (tie: a read first), c = 1/2
    fused = reciprocal_rank_fusion([["a", "b", "a"], ["b", "c"]], k=0, weights=[2.0, 1.0])
    assert fused == [("a", pytest.approx(2.0)), ("b", pytest.approx(2.0)), ("c", pytest.approx(0.5))]
    assert reciprocal_rank_fusion([]) == []
    with pytest.raises(ValueError):
        reciprocal_rank_fusion([["a"]], weights=[1.0, 1.0])


def test_min_max_normalise():
    assert min_max_normalise([3.0, 1.0, 2.0]) == [1.0, 0.0, 0.5]
    assert min_max_normalise([0.4, 0.4]) == [1.0, 1.0]
    assert min_max_normalise([]) == []


DENSE = [("a", 0.9), ("b", 0.7), ("c", 0.5)]
LEXICAL = [("c", 12.0), ("d", 4.0), ("a", 2.0)]


def test_weighted_score_fusion_on_min_max_normalised_scores():
    # dense normalised: a 1, b 0.5, c 0; lexical: c 1, d 0.2, a 0
    fused = weighted_score_fusion(DENSE, LEXICAL, alpha=0.5)
    assert fused == [("a", pytest.approx(0.5)), ("c", pytest.approx(0.5)), ("b", pytest.approx(0.25)), ("d", pytest.approx(0.1))]
    assert [item for item, _ in weighted_score_fusion(DENSE, LEXICAL, alpha=0.8)] == ["a", "b", "c", "d"]  # .8 .4 .2 .04
    fused = weighted_score_fusion(DENSE, LEXICAL, alpha=0.25)  # a .25, b .125, c .75, d .15
    assert fused == [("c", pytest.approx(0.75)), ("a", pytest.approx(0.25)), ("d", pytest.approx(0.15)), ("b", pytest.approx(0.125))]


def test_weighted_score_fusion_edges():
    assert weighted_score_fusion(DENSE, [], alpha=1.0) == [("a", 1.0), ("b", pytest.approx(0.5)), ("c", 0.0)]
    assert weighted_score_fusion([], [("x", 3.0)], alpha=0.5) == [("x", 0.5)]  # one score: its list's best
    with pytest.raises(ValueError):
        weighted_score_fusion(DENSE, LEXICAL, alpha=1.5)
