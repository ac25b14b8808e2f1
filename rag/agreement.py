"""Agreement between two annotators on categorical judgments: percent agreement and Cohen's
kappa, from item pairs or from a confusion table, and one figure that combines several pairs.

Cohen's kappa (Cohen 1960) corrects observed agreement p_o for the agreement p_e two raters
with their own base rates would reach by chance: kappa = (p_o - p_e) / (1 - p_e), where
p_e = sum over categories k of (share of items A put in k) * (share of items B put in k).

Two choices, made here once for the whole product:
- When p_e == 1 the formula is 0/0: both raters put every item in the same single category.
  That can only happen with p_o == 1, so we report 1.0 (perfect agreement, nothing left to
  correct for chance) instead of "undefined"; otherwise a pair of curators who always say
  "correct" would vanish from the agreement table. The 0.0 branch for p_o < 1 is only a guard
  against rounding.
- Several pairs combine into one figure by an item-weighted mean of the pairs' kappas
  (`pairs_combined`), not by pooling every pair's items into one table: in a pooled table
  "rater A" is a different curator from item to item, so its marginals (and the chance
  correction built on them) describe nobody. The weighted mean lets each item count once and
  each pair use its own curators' base rates. Percent agreement pools exactly (agreed items /
  all items), which is the same thing as the item-weighted mean of the pairs' percentages.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Agreement:
    """Agreement of two raters (or of several pairs combined) on `items` judged by both."""

    items: int
    agreed: int
    kappa: float | None

    @property
    def percent(self) -> float | None:
        """Observed agreement in percent; None when there are no items."""
        return 100.0 * self.agreed / self.items if self.items else None


def confusion_table(pairs: Iterable[tuple[str, str]]) -> Counter[tuple[str, str]]:
    """How many items rater A put in category a and rater B in category b, keyed (a, b)."""
    return Counter(pairs)


def kappa_from_table(table: Mapping[tuple[str, str], int]) -> float | None:
    """Cohen's kappa of a confusion table {(A's category, B's category): item count}.

    None when the table is empty (kappa is undefined without items).
    """
    total = sum(table.values())
    if total <= 0:
        return None
    observed = sum(count for (a, b), count in table.items() if a == b) / total
    rater_a: Counter[str] = Counter()
    rater_b: Counter[str] = Counter()
    for (a, b), count in table.items():
        rater_a[a] += count
        rater_b[b] += count
    expected = sum(rater_a[k] * rater_b[k] for k in rater_a) / (total * total)
    if math.isclose(expected, 1.0, rel_tol=0.0, abs_tol=1e-12):
        # Both raters used one and the same category for every item: see the module docstring.
        return 1.0 if math.isclose(observed, 1.0, rel_tol=0.0, abs_tol=1e-12) else 0.0
    return (observed - expected) / (1.0 - expected)


def cohen_kappa(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Cohen's kappa of two raters' categories for the same items, one (a, b) pair per item.

    None when there are no pairs; 1.0 when both raters used a single, shared category.
    """
    return kappa_from_table(confusion_table(pairs))


def percent_agreement(pairs: Sequence[tuple[str, str]]) -> float | None:
    """Share of items (in percent) on which the two raters chose the same category."""
    return agreement_from_table(confusion_table(pairs)).percent


def agreement_from_table(table: Mapping[tuple[str, str], int]) -> Agreement:
    """Items, agreed items and kappa of one pair of raters, from their confusion table."""
    return Agreement(
        items=sum(table.values()),
        agreed=sum(count for (a, b), count in table.items() if a == b),
        kappa=kappa_from_table(table),
    )


def pairs_combined(pairs: Iterable[Agreement]) -> Agreement:
    """One figure for several pairs of raters: items and agreed items summed, kappa the
    item-weighted mean of the pairs' kappas (pairs without a kappa add nothing to it)."""
    pairs = list(pairs)
    weighted = [(pair.kappa, pair.items) for pair in pairs if pair.kappa is not None and pair.items]
    weight = sum(items for _, items in weighted)
    return Agreement(
        items=sum(pair.items for pair in pairs),
        agreed=sum(pair.agreed for pair in pairs),
        kappa=sum(kappa * items for kappa, items in weighted) / weight if weight else None,
    )
