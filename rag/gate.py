"""The metric gate of a retraining policy: does a candidate beat the live version by enough,
with enough confidence, on enough queries, without a guard metric dropping too far?

Pure arithmetic over the paired bootstrap intervals an evaluation stores
(rag.metrics.paired_bootstrap_interval: {"delta", "low", "high", "queries"} per metric), so the
rule can be checked by hand: the primary metric's mean change must be at least `margin` and
the lower bound of its 95% interval above zero; each guard metric's mean change must be at
least -tolerance; and at least `min_queries` held-out queries must have been scored.
"""

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class GateRule:
    metric: str
    margin: float = 0.0
    guards: Mapping[str, float] = field(default_factory=dict)  # metric -> largest allowed drop
    min_queries: int = 1


@dataclass(frozen=True)
class GateOutcome:
    passed: bool
    reasons: list[str]  # why it failed; empty when it passed
    metric: str
    delta: float | None
    low: float | None
    high: float | None
    queries: int
    guards: dict[str, float | None]  # guard metric -> its mean change

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def summary(self) -> str:
        if self.delta is None:
            figures = f"{self.metric}: not measured"
        else:
            figures = f"{self.metric} {self.delta:+.4f} [{self.low:+.4f}, {self.high:+.4f}] on {self.queries} queries"
        return f"passed: {figures}" if self.passed else f"refused: {'; '.join(self.reasons)} ({figures})"


def gate_decide(*, intervals: Mapping[str, Mapping[str, float]], rule: GateRule) -> GateOutcome:
    """Apply `rule` to an evaluation's per-metric intervals (candidate minus live)."""
    reasons = []
    primary = intervals.get(rule.metric)
    delta = low = high = None
    queries = 0
    if primary is None:
        reasons.append(f"{rule.metric} was not measured")
    else:
        delta, low, high, queries = primary["delta"], primary["low"], primary["high"], int(primary["queries"])
        if queries < rule.min_queries:
            reasons.append(f"only {queries} held-out queries, the gate needs at least {rule.min_queries}")
        if delta < rule.margin:
            reasons.append(f"{rule.metric} changed by {delta:+.4f}, less than the margin {rule.margin:+.4f}")
        if low <= 0:
            reasons.append(f"the 95% interval of the {rule.metric} change reaches {low:+.4f}, not above zero")
    guard_deltas: dict[str, float | None] = {}
    for metric, tolerance in sorted(rule.guards.items()):
        guard = intervals.get(metric)
        if guard is None:
            guard_deltas[metric] = None
            reasons.append(f"guard {metric} was not measured")
            continue
        guard_deltas[metric] = guard["delta"]
        if guard["delta"] < -tolerance:
            reasons.append(f"guard {metric} dropped by {-guard['delta']:.4f}, more than its tolerance {tolerance:.4f}")
    return GateOutcome(
        passed=not reasons, reasons=reasons, metric=rule.metric, delta=delta, low=low, high=high, queries=queries,
        guards=guard_deltas,
    )
