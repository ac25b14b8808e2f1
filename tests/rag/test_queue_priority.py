"""A turn's place in the curation queue, from its feedback and its passages' scores."""

import pytest

from rag.queue_priority import turn_queue_position


def test_queue_position_tiers():
    assert turn_queue_position(feedback=-1, scores=[0.9, 0.1], created=100.0) == (0, -100.0)
    tier, order = turn_queue_position(feedback=None, scores=[0.80, 0.78, 0.1])
    assert tier == 1 and order == pytest.approx(0.02)
    assert turn_queue_position(feedback=1, scores=[0.9, 0.5])[0] == 2
    assert turn_queue_position(feedback=None, scores=[0.9])[0] == 2


# --- re-scoring with the current models ---------------------------------------------------

from rag.queue_priority import (  # noqa: E402
    CANDIDATE_AGREEMENT_THRESHOLD,
    LOW_CONFIDENCE_MARGIN,
    QueuePosition,
    rank_biased_overlap,
    stable_random_order,
    turn_queue_rescore,
)

CLEAR = [("a", 0.9), ("b", 0.5), ("c", 0.4)]  # a clear winner
CLOSE = [("a", 0.61), ("a", 0.609), ("b", 0.60), ("c", 0.3)]  # two chunks of a; a and b 0.01 apart


def _place(**kwargs) -> QueuePosition:
    return turn_queue_rescore(**{"feedback": None, "created": 100.0, "random_order": 0.5, **kwargs})


def test_rank_biased_overlap():
    ranking = list("abcdefghij")
    assert rank_biased_overlap(ranking, ranking) == pytest.approx(1.0)
    assert rank_biased_overlap(ranking, list("klmnopqrst")) == 0.0
    assert rank_biased_overlap(ranking, list("bacdefghij")) == pytest.approx(0.8465, abs=1e-4)  # top two swapped
    assert rank_biased_overlap(ranking, list("xabcdefghi")) == pytest.approx(0.6386, abs=1e-4)  # a new top document
    assert rank_biased_overlap(list("abcd"), list("abcd"), depth=10) == pytest.approx(1.0)  # short rankings
    assert rank_biased_overlap(list("abcd"), list("dbca")) == pytest.approx(0.4999, abs=1e-4)


def test_rescored_order_is_feedback_then_candidate_then_margin_then_agents_then_random():
    feedback = _place(feedback=-1, live_ranking=CLEAR, candidate_ranking=list("xyz"))
    disagree_most = _place(live_ranking=CLEAR, candidate_ranking=list("xyz"))
    disagree = _place(live_ranking=CLEAR, candidate_ranking=list("xab"))
    close = _place(live_ranking=CLOSE, candidate_ranking=list("abc"))
    closer = _place(live_ranking=[("a", 0.6), ("b", 0.599)])
    agents = _place(live_ranking=CLEAR, agent_agreement=0.25)
    sample = _place(live_ranking=CLEAR, candidate_ranking=list("abc"), agent_agreement=1.0)

    assert feedback == QueuePosition(0, -100.0, "feedback", None)
    assert (disagree_most.reason, disagree_most.value, disagree_most.order) == ("candidate", 0.0, -1.0)
    assert disagree.reason == "candidate" and disagree.value < CANDIDATE_AGREEMENT_THRESHOLD
    # Margins between documents: the second chunk of `a` does not count as a rival.
    assert (close.reason, close.value) == ("margin", 0.01) and close.value < LOW_CONFIDENCE_MARGIN
    assert (closer.reason, closer.value) == ("margin", 0.001)
    assert (agents.reason, agents.value, agents.order) == ("agents", 0.25, 1.25)
    assert sample == QueuePosition(2, 0.5, "", None)
    places = [sample, agents, close, closer, disagree, feedback, disagree_most]
    ordered = sorted(places, key=lambda p: (p.tier, p.order))
    assert ordered == [feedback, disagree_most, disagree, closer, close, agents, sample]


def test_candidate_disagreement_comes_before_a_low_margin_on_the_same_turn():
    both = _place(live_ranking=CLOSE, candidate_ranking=list("xyz"))
    assert both.reason == "candidate"


def test_the_random_tier_keeps_a_turn_s_place_and_a_returning_turn_gets_a_stable_one():
    assert _place(live_ranking=CLEAR, current=(2, 0.123)).order == 0.123  # stays: keeps its place
    back = _place(live_ranking=CLEAR, current=(1, 0.01), random_order=stable_random_order(42))
    assert back == QueuePosition(2, stable_random_order(42), "", None)
    assert stable_random_order(42) == stable_random_order(42) != stable_random_order(43)
    assert 0 <= stable_random_order(42) < 1
    assert _place(live_ranking=[], candidate_ranking=list("abc")).tier == 2  # nothing retrieved: no signal
