"""The metric gate's arithmetic, on hand-computed intervals."""

from rag.gate import GateRule, gate_decide

NDCG = "ndcg@10"


def intervals(delta, low, high, queries=50, **guards):
    figures = {NDCG: {"delta": delta, "low": low, "high": high, "queries": queries}}
    for name, change in guards.items():
        figures[name.replace("_", "@")] = {"delta": change, "low": change - 0.1, "high": change + 0.1, "queries": queries}
    return figures


def test_a_clear_improvement_passes_with_its_figures():
    outcome = gate_decide(intervals=intervals(0.06, 0.02, 0.10), rule=GateRule(metric=NDCG, margin=0.05, min_queries=50))
    assert outcome.passed and outcome.reasons == []
    assert (outcome.delta, outcome.low, outcome.high, outcome.queries) == (0.06, 0.02, 0.10, 50)
    assert outcome.summary == "passed: ndcg@10 +0.0600 [+0.0200, +0.1000] on 50 queries"


def test_below_the_margin_fails_even_when_the_interval_is_above_zero():
    outcome = gate_decide(intervals=intervals(0.04, 0.01, 0.07), rule=GateRule(metric=NDCG, margin=0.05))
    assert not outcome.passed and outcome.reasons == ["ndcg@10 changed by +0.0400, less than the margin +0.0500"]


def test_an_interval_reaching_zero_fails_even_above_the_margin():
    outcome = gate_decide(intervals=intervals(0.06, 0.0, 0.12), rule=GateRule(metric=NDCG, margin=0.05))
    assert outcome.reasons == ["the 95% interval of the ndcg@10 change reaches +0.0000, not above zero"]


def test_too_few_queries_fails():
    outcome = gate_decide(intervals=intervals(0.2, 0.1, 0.3, queries=19), rule=GateRule(metric=NDCG, min_queries=20))
    assert outcome.reasons == ["only 19 held-out queries, the gate needs at least 20"]


def test_a_guard_may_drop_up_to_its_tolerance_but_not_more():
    rule = GateRule(metric=NDCG, guards={"recall@10": 0.02})
    assert gate_decide(intervals=intervals(0.1, 0.05, 0.15, recall_10=-0.02), rule=rule).passed
    outcome = gate_decide(intervals=intervals(0.1, 0.05, 0.15, recall_10=-0.03), rule=rule)
    assert outcome.reasons == ["guard recall@10 dropped by 0.0300, more than its tolerance 0.0200"]
    assert outcome.guards == {"recall@10": -0.03}


def test_unmeasured_metrics_fail_and_every_reason_is_listed():
    outcome = gate_decide(intervals={}, rule=GateRule(metric=NDCG, guards={"mrr@10": 0.01}))
    assert outcome.reasons == ["ndcg@10 was not measured", "guard mrr@10 was not measured"]
    assert outcome.summary.startswith("refused: ndcg@10 was not measured; guard mrr@10")
    many = gate_decide(intervals=intervals(-0.01, -0.05, 0.03, queries=5), rule=GateRule(metric=NDCG, margin=0.0, min_queries=10))
    assert len(many.reasons) == 3
