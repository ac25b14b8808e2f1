"""rag.suggestions: the threshold calibration (a threshold that provably agrees best), the
retriever agent, the LLM judge's prompt and its lenient-but-strict reply parsing, a failed or
malformed reply recorded as a failure, and the agent registry with its reranker slot."""

import itertools

import pytest

from rag.generation import OpenAIChatGenerator
from rag.suggestions import (
    JUDGE_SYSTEM_PROMPT,
    AgentContext,
    JudgeReplyError,
    LLMJudgeAgent,
    PassageToJudge,
    RetrieverThresholdAgent,
    TurnToJudge,
    agent_kinds,
    agent_rank,
    agents_build,
    judge_messages,
    judge_reply_parse,
    register_agent_factory,
    threshold_calibrate,
)
from tests.conftest import FakeJudgeServer

TURN = TurnToJudge(
    turn_id=7, query="How long do refunds take?", answer="Within 14 days.", retriever_version="base",
    passages=[PassageToJudge(101, 1, "Refunds take 14 days.", title="Returns", score=0.82),
              PassageToJudge(102, 2, "Gift cards cannot be refunded.", score=0.55),
              PassageToJudge(103, 3, "Stores open at 9.", score=None)],
)  # fmt: skip


def brute_force_best(judged, candidates):
    """The best accuracy any threshold among `candidates` reaches (relevant vs not only)."""
    binary = [(s, r == "relevant") for s, r in judged if r != "partly"]
    return max(sum((s >= t) == rel for s, rel in binary) for t in candidates)


def test_calibration_picks_the_threshold_that_agrees_best_with_curators():
    # Relevant passages mostly score high, with one relevant at 0.35 and one not relevant at
    # 0.7 that no threshold can get right; "partly" ones are ignored whatever their score.
    judged = (
        [(0.9, "relevant"), (0.85, "relevant"), (0.8, "relevant"), (0.75, "relevant"), (0.7, "not_relevant"),
         (0.65, "relevant"), (0.62, "relevant"), (0.35, "relevant"), (0.1, "partly"), (0.95, "partly")]
        + [(0.6 - i * 0.02, "not_relevant") for i in range(12)]
    )  # fmt: skip
    calibration = threshold_calibrate(judged, min_passages=20)

    assert calibration.calibrated
    assert calibration.items == 20  # the two partly passages are left out
    # Between 0.6 (the highest not relevant below the relevant block) and 0.62: 18 of 20 agree.
    assert calibration.threshold == pytest.approx(0.61)
    assert calibration.agreed == 18
    # No threshold at all does better: every cut between and around the scores, and a grid.
    scores = sorted({s for s, _ in judged})
    grid = [i / 1000 for i in range(0, 1001)] + [(a + b) / 2 for a, b in itertools.pairwise(scores)]
    assert brute_force_best(judged, grid) == 18
    # Cohen's kappa of that cut, by hand: 7 relevant (6 above), 13 not (12 below, 1 above).
    # p_o = 18/20; suggested relevant 7/20, curators relevant 7/20; p_e = (7*7 + 13*13)/400.
    p_e = (7 * 7 + 13 * 13) / 400
    assert calibration.kappa == pytest.approx((0.9 - p_e) / (1 - p_e))


def test_calibration_ties_go_to_the_higher_kappa_then_the_lower_threshold():
    # Perfectly separable: every threshold in (0.4, 0.6] agrees on all; the lowest midpoint wins.
    judged = [(0.4, "not_relevant")] * 10 + [(0.6, "relevant")] * 10
    calibration = threshold_calibrate(judged, min_passages=20)
    assert (calibration.threshold, calibration.agreed, calibration.kappa) == (pytest.approx(0.5), 20, 1.0)


def test_too_few_labels_or_one_kind_only_keep_the_default_and_say_so():
    few = threshold_calibrate([(0.9, "relevant"), (0.2, "not_relevant")], default=0.5, min_passages=20)
    assert (few.threshold, few.calibrated, few.items, few.agreed) == (0.5, False, 2, 2)
    one_kind = threshold_calibrate([(0.9, "relevant")] * 30, default=0.5, min_passages=20)
    assert (one_kind.calibrated, one_kind.threshold, one_kind.items) == (False, 0.5, 30)


def test_the_retriever_agent_cuts_at_its_threshold_and_skips_passages_without_a_score():
    outcome = RetrieverThresholdAgent(threshold=0.6, calibrated=True).suggest([TURN])
    assert [(p.passage_id, p.value, p.score, p.agent) for p in outcome.proposals] == [
        (101, "relevant", 0.82, "retriever:base"), (102, "not_relevant", 0.55, "retriever:base")]
    assert outcome.proposals[0].reason == "score 0.820 ≥ calibrated threshold 0.600"
    assert outcome.done == [(7, "retriever:base")] and outcome.failures == []
    uncalibrated = RetrieverThresholdAgent(threshold=0.5, calibrated=False).suggest([TURN])
    assert "default threshold (not calibrated yet)" in uncalibrated.proposals[0].reason


def test_the_judge_prompt_numbers_the_passages_and_asks_for_json():
    system, user = judge_messages(TURN)
    assert system == {"role": "system", "content": JUDGE_SYSTEM_PROMPT}
    assert "Reply with JSON only" in system["content"]
    content = user["content"]
    assert content.startswith("Question: How long do refunds take?\n\nPassages:\n[1] Returns: Refunds take 14 days.\n\n"
                              "[2] Gift cards cannot be refunded.\n\n[3] Stores open at 9.\n\nAnswer: Within 14 days.")
    assert '"relevance": "relevant" | "partly" | "not_relevant"' in content
    assert '"rating": "correct" | "partly" | "wrong"' in content


def test_the_judge_reply_parser_is_lenient_in_form_and_strict_in_content():
    reply = """Sure! ```json
    {"passages": {"1": {"relevance": "Relevant", "confidence": 0.9, "reason": "  says   14 days "},
                  "2": "irrelevant", "3": {"relevance": "maybe"}, "9": {"relevance": "relevant"}},
     "answer": {"rating": "Partially correct", "confidence": 3, "reason": "misses gift cards"}}
    ```"""
    proposals = judge_reply_parse(reply, turn=TURN, agent="llm-judge:m")
    assert [(p.passage_id, p.value, p.score, p.reason) for p in proposals] == [
        (101, "relevant", 0.9, "says 14 days"),
        (102, "not_relevant", None, ""),
        (None, "partly", None, "misses gift cards"),  # a confidence outside [0, 1] is dropped
    ]  # "maybe" and passage 9 (the turn has 3) are left out


@pytest.mark.parametrize("reply", ["The first passage is good.", '{"passages": [], "answer": {"rating": "great"}}',
                                   "[1, 2]", '{"passages": [{"number": 1, "relevance": "rel'])
def test_a_reply_with_no_usable_judgment_is_an_error(reply):
    with pytest.raises(JudgeReplyError):
        judge_reply_parse(reply, turn=TURN, agent="llm-judge:m")


@pytest.fixture
def judge_url(judge_server_url):
    return judge_server_url


def test_the_llm_judge_against_a_local_endpoint(judge_url):
    agent = LLMJudgeAgent(completer=OpenAIChatGenerator(base_url=f"{judge_url}/fenced/v1", model="judge-1"), model="judge-1")
    outcome = agent.suggest([TURN])

    [request] = FakeJudgeServer.requests
    assert request["path"] == "/fenced/v1/chat/completions"
    assert request["body"]["model"] == "judge-1" and request["body"]["temperature"] == 0
    assert request["body"]["messages"] == judge_messages(TURN)
    assert [(p.passage_id, p.value, p.agent) for p in outcome.proposals] == [
        (101, "relevant", "llm-judge:judge-1"), (102, "partly", "llm-judge:judge-1"),
        (103, "not_relevant", "llm-judge:judge-1"), (None, "correct", "llm-judge:judge-1")]
    assert outcome.proposals[-1].reason == "the answer matches passage 1"
    assert outcome.done == [(7, "llm-judge:judge-1")]


@pytest.mark.parametrize(("path", "error"), [("malformed", "no JSON object in the reply"), ("down", "returned 500")])
def test_a_malformed_or_failed_reply_is_a_recorded_failure_not_a_crash(judge_url, path, error):
    other = TurnToJudge(turn_id=8, query="q", answer="a", passages=[PassageToJudge(201, 1, "text")])
    agent = LLMJudgeAgent(completer=OpenAIChatGenerator(base_url=f"{judge_url}/{path}/v1", model="m"), model="m")
    outcome = agent.suggest([TURN, other])
    assert outcome.proposals == [] and outcome.done == []
    assert [(f.turn_id, f.agent) for f in outcome.failures] == [(7, "llm-judge:m"), (8, "llm-judge:m")]
    assert error in outcome.failures[0].error


def test_the_registry_builds_what_applies_and_has_a_slot_for_a_reranker():
    assert agent_kinds() == ["retriever", "reranker", "llm-judge"]
    assert [a.kind for a in agents_build(AgentContext(knowledge_base_id=1))] == ["retriever"]

    class Reranker:
        kind = "reranker"

        def __init__(self, version):
            self.version = version

        def agent_name(self, turn):
            return f"reranker:{self.version}"

        def suggest(self, turns):
            raise NotImplementedError

    from rag import suggestions

    previous = suggestions._FACTORIES["reranker"]
    register_agent_factory("reranker", lambda context: Reranker(context.reranker_version) if context.reranker_version else None)
    try:
        built = agents_build(AgentContext(knowledge_base_id=1, reranker_version="r-3"))
        assert [a.kind for a in built] == ["retriever", "reranker"]
        assert built[1].agent_name(TURN) == "reranker:r-3"
    finally:
        register_agent_factory("reranker", previous)


def test_preselection_order_measured_kappa_first_then_kind():
    names = ["retriever:base", "llm-judge:m", "reranker:r1"]
    assert sorted(names, key=lambda n: agent_rank(n, kappa=None)) == ["reranker:r1", "llm-judge:m", "retriever:base"]
    kappas = {"retriever:base": 0.7, "llm-judge:m": 0.4}
    assert sorted(names, key=lambda n: agent_rank(n, kappa=kappas.get(n))) == ["retriever:base", "llm-judge:m", "reranker:r1"]
