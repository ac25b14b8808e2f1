"""Cohen's kappa and percent agreement against tables computed by hand."""

import pytest

from rag.agreement import (
    Agreement,
    agreement_from_table,
    cohen_kappa,
    confusion_table,
    kappa_from_table,
    pairs_combined,
    percent_agreement,
)


def expand(table: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    return [pair for pair, count in table.items() for _ in range(count)]


# 2x2, 50 items (rows: rater A, columns: rater B)
#             B yes  B no
#   A yes      20     5      A: yes 25/50 = 0.5
#   A no       10    15      B: yes 30/50 = 0.6
# p_o = (20 + 15) / 50 = 0.7
# p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5
# kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
TWO_BY_TWO = {("yes", "yes"): 20, ("yes", "no"): 5, ("no", "yes"): 10, ("no", "no"): 15}

# 3x3, 15 items of passage relevance (R relevant, P partly, N not relevant)
#          B R  B P  B N   row
#   A R     4    1    0     5
#   A P     1    2    1     4
#   A N     0    1    5     6
#   col     5    4    6    15
# p_o = (4 + 2 + 5) / 15 = 11/15
# p_e = (5*5 + 4*4 + 6*6) / 15^2 = 77/225
# kappa = (165/225 - 77/225) / (148/225) = 88/148 = 22/37 ≈ 0.5946
THREE_BY_THREE = {
    ("R", "R"): 4, ("R", "P"): 1,
    ("P", "R"): 1, ("P", "P"): 2, ("P", "N"): 1,
    ("N", "P"): 1, ("N", "N"): 5,
}


def test_two_by_two_table_computed_by_hand():
    pairs = expand(TWO_BY_TWO)
    assert cohen_kappa(pairs) == pytest.approx(0.4)
    assert percent_agreement(pairs) == pytest.approx(70.0)


def test_three_by_three_table_computed_by_hand():
    pairs = expand(THREE_BY_THREE)
    assert cohen_kappa(pairs) == pytest.approx(22 / 37)
    assert percent_agreement(pairs) == pytest.approx(100 * 11 / 15)
    assert confusion_table(pairs) == THREE_BY_THREE
    assert kappa_from_table(THREE_BY_THREE) == pytest.approx(22 / 37)


def test_kappa_does_not_depend_on_item_order_or_on_which_rater_is_a():
    pairs = expand(THREE_BY_THREE)
    swapped = [(b, a) for a, b in reversed(pairs)]
    assert cohen_kappa(swapped) == pytest.approx(cohen_kappa(pairs))


def test_perfect_agreement_and_systematic_disagreement():
    assert cohen_kappa([("R", "R"), ("N", "N"), ("P", "P")]) == pytest.approx(1.0)
    # p_o = 0, p_e = 0.5 * 0.5 + 0.5 * 0.5 = 0.5 -> kappa = -1
    assert cohen_kappa([("R", "N"), ("N", "R")]) == pytest.approx(-1.0)


def test_undefined_and_degenerate_cases():
    assert cohen_kappa([]) is None
    assert percent_agreement([]) is None
    # One shared category for every item: p_e == 1, reported as perfect agreement (documented).
    assert cohen_kappa([("correct", "correct")] * 4) == 1.0
    # Different single categories: p_e = 0, p_o = 0 -> 0.0 by the formula
    assert cohen_kappa([("correct", "wrong")] * 3) == 0.0


def test_agreement_figures_and_item_weighted_combination():
    first = agreement_from_table(TWO_BY_TWO)
    second = agreement_from_table(THREE_BY_THREE)
    assert (first.items, first.agreed) == (50, 35)
    assert (second.items, second.agreed) == (15, 11)
    combined = pairs_combined([first, second, Agreement(items=0, agreed=0, kappa=None)])
    assert combined.items == 65 and combined.agreed == 46
    assert combined.percent == pytest.approx(100 * 46 / 65)
    # (0.4 * 50 + 22/37 * 15) / 65
    assert combined.kappa == pytest.approx((0.4 * 50 + 22 / 37 * 15) / 65)
    assert pairs_combined([]).kappa is None and pairs_combined([]).percent is None
