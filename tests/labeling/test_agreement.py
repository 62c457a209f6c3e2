"""Agreement coefficients against numbers computed by hand on small fixed data."""

from __future__ import annotations

import pytest

from labeling.agreement import (
    PairKappa,
    alpha_from_patterns,
    cohen_kappa,
    krippendorff_alpha,
    masi_alpha,
    masi_distance,
    pairwise_kappa,
    unit_patterns,
)

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: 4 observers,
# 12 units, values 1-5, None = missing.
#   unit:   1  2  3  4  5  6  7  8  9  10 11 12
#   A:      1  2  3  3  2  1  4  1  2  .  .  .
#   B:      1  2  3  3  2  2  4  1  2  5  .  3
#   C:      .  3  3  3  2  3  4  2  2  5  1  .
#   D:      1  2  3  3  2  4  4  1  2  5  1  .
# Unit 12 has one value and is not pairable, so n = 40 pairable values. Disagreeing ordered pairs,
# each weighted 1/(m_u - 1): unit 2 {2,3,2,2}: 3*1*2 = 6 pairs / 3 = 2; unit 6 {1,2,3,4}: 12 / 3 = 4;
# unit 8 {1,1,2,1}: 6 / 3 = 2; every other unit agrees. So D_o = (2 + 4 + 2) / 40 = 0.2.
# Value totals n_c: 1 → 9, 2 → 13, 3 → 10, 4 → 5, 5 → 3 (sum 40), so
# D_e = (40² - (81 + 169 + 100 + 25 + 9)) / (40 * 39) = 1216 / 1560, and
# alpha = 1 - 0.2 / (1216 / 1560) = 1 - 312 / 1216 = 0.743421... (the paper's nominal 0.743).
KRIPPENDORFF_2011 = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def units_from_columns(columns: dict[str, list[object]]) -> dict[int, dict[str, object]]:
    size = len(next(iter(columns.values())))
    return {u: {c: v[u] for c, v in columns.items() if v[u] is not None} for u in range(size)}


def test_krippendorff_nominal_textbook_example():
    assert krippendorff_alpha(units_from_columns(KRIPPENDORFF_2011)) == pytest.approx(1 - 312 / 1216)
    assert round(krippendorff_alpha(units_from_columns(KRIPPENDORFF_2011)), 3) == 0.743


def test_perfect_agreement_gives_alpha_and_kappa_one():
    units = {1: {"a": "x", "b": "x"}, 2: {"a": "y", "b": "y", "c": "y"}, 3: {"a": "x", "b": "x"}}
    assert krippendorff_alpha(units) == 1.0
    assert cohen_kappa(["x", "y", "x"], ["x", "y", "x"]) == 1.0


def test_chance_level_agreement():
    # Kappa: p_o = 2/4 (items 1 and 4), p_e = .5*.5 + .5*.5 = .5, so kappa = 0.
    assert cohen_kappa(["x", "x", "y", "y"], ["x", "y", "x", "y"]) == 0.0
    # Alpha on the same data is slightly above 0 (its small-sample correction): o[x,x] = o[y,y] = 2,
    # o[x,y] = o[y,x] = 2, n = 8, n_x = n_y = 4; D_o = 4/8, D_e = (64 - 32) / (8 * 7) = 4/7,
    # alpha = 1 - (1/2) / (4/7) = 1/8.
    units = {1: {"a": "x", "b": "x"}, 2: {"a": "x", "b": "y"}, 3: {"a": "y", "b": "x"}, 4: {"a": "y", "b": "y"}}
    assert krippendorff_alpha(units) == pytest.approx(1 / 8)
    # Alpha exactly 0: {x,x} and {x,y}; o[x,x] = 2, o[x,y] = o[y,x] = 1, n_x = 3, n_y = 1, n = 4;
    # D_o = 2/4, D_e = 2 * 3 * 1 / (4 * 3) = 1/2.
    assert krippendorff_alpha({1: {"a": "x", "b": "x"}, 2: {"a": "x", "b": "y"}}) == pytest.approx(0.0)


def test_systematic_disagreement_gives_negative_alpha_and_kappa():
    units = {1: {"a": "x", "b": "y"}, 2: {"a": "y", "b": "x"}}
    # D_o = 4/4 = 1, D_e = (16 - 8) / (4 * 3) = 2/3, alpha = 1 - 3/2.
    assert krippendorff_alpha(units) == pytest.approx(-0.5)
    # p_o = 0, p_e = 1/2: kappa = -1.
    assert cohen_kappa(["x", "y"], ["y", "x"]) == -1.0


def test_cohen_kappa_two_by_two_table():
    # 50 items: both yes 20, first yes/second no 5, first no/second yes 10, both no 15.
    # p_o = 35/50 = .7; marginals yes .5 and .6, so p_e = .5*.6 + .5*.4 = .5; kappa = .2/.5 = .4.
    first = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)


def test_missing_data_and_units_with_one_value_are_ignored():
    units = {1: {"a": "x", "b": "x"}, 2: {"a": "y", "b": "y"}}
    with_singletons = {**units, 3: {"a": "x"}, 4: {"c": "y"}, 5: {}}
    assert krippendorff_alpha(with_singletons) == krippendorff_alpha(units) == 1.0
    assert krippendorff_alpha({}) is None
    assert krippendorff_alpha({1: {"a": "x"}, 2: {"b": "y"}}) is None  # nothing pairable


def test_edge_cases_are_defined_explicitly():
    # Every value alike: D_e = 0 and D_o = 0, alpha defined as 1.
    assert krippendorff_alpha({1: {"a": "x", "b": "x"}, 2: {"a": "x", "b": "x"}}) == 1.0
    # Both coders always used the same single category: p_e = 1, kappa defined as 1.
    assert cohen_kappa(["x", "x"], ["x", "x"]) == 1.0
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError, match="different numbers"):
        cohen_kappa(["x"], ["x", "y"])


@pytest.mark.parametrize(
    ("first", "second", "distance"),
    [
        ({"a", "b"}, {"b", "a"}, 0.0),  # identical: M = 1, J = 1
        ({"a"}, {"a", "b"}, 1 - (1 / 2) * (2 / 3)),  # subset: J = 1/2, M = 2/3 → 2/3
        ({"a", "b"}, {"b", "c"}, 1 - (1 / 3) * (1 / 3)),  # overlap: J = 1/3, M = 1/3 → 8/9
        ({"a"}, {"b"}, 1.0),  # disjoint: M = 0
        (set(), set(), 0.0),
        (set(), {"a"}, 1.0),  # J = 0
    ],
)
def test_masi_distance(first, second, distance):
    assert masi_distance(first, second) == pytest.approx(distance)
    assert masi_distance(second, first) == pytest.approx(distance)


def test_masi_alpha_by_hand():
    # Sets X={x}, XY={x,y}, Y={y}, Z={z}. Units: {X, X}, {XY, X}, {Y, Z}.
    # o[X,X] = 2, o[X,XY] = o[XY,X] = 1, o[Y,Z] = o[Z,Y] = 1; n_X = 3, n_XY = n_Y = n_Z = 1, n = 6.
    # δ(X,XY) = δ(XY,Y) = 2/3 (subset, J = 1/2), every other pair 1 (disjoint).
    # D_o = (2 * 2/3 + 2 * 1) / 6 = 5/9.
    # D_e = 2 * (X-XY 3*1*2/3 + X-Y 3 + X-Z 3 + XY-Y 2/3 + XY-Z 1 + Y-Z 1) / (6 * 5) = (64/3) / 30 = 32/45.
    # alpha = 1 - (5/9) / (32/45) = 1 - 25/32 = 7/32. Nominal on the same sets: 1 - (2/3) / (4/5) = 1/6.
    units = {1: {"a": {"x"}, "b": {"x"}}, 2: {"a": {"x", "y"}, "b": {"x"}}, 3: {"a": {"y"}, "b": {"z"}}}
    assert masi_alpha(units) == pytest.approx(7 / 32)
    as_sets = {u: {c: frozenset(v) for c, v in coded.items()} for u, coded in units.items()}
    assert krippendorff_alpha(as_sets) == pytest.approx(1 / 6)


def test_patterns_give_the_same_alpha_as_units():
    units = units_from_columns(KRIPPENDORFF_2011)
    assert alpha_from_patterns(unit_patterns(units)) == krippendorff_alpha(units)
    # Binary data as counts: 3 units (1, 1), 1 unit (1, 0), 4 units (0, 0).
    # o[1,1] = 6, o[0,0] = 8, o[1,0] = o[0,1] = 1; n_1 = 7, n_0 = 9, n = 16;
    # D_o = 2/16, D_e = 2 * 7 * 9 / (16 * 15) = 126/240; alpha = 1 - (1/8) / (126/240) = 1 - 240/1008.
    assert alpha_from_patterns({(1, 1): 3, (1, 0): 1, (0, 0): 4}) == pytest.approx(1 - 240 / 1008)


def test_pairwise_kappa_on_shared_items_only():
    units = {
        1: {"a": "x", "b": "x", "c": "y"},
        2: {"a": "y", "b": "y"},
        3: {"a": "x", "c": "x"},
        4: {"b": "y", "c": "y"},
        5: {"d": "x"},  # d shares nothing: no pair
    }
    # a-b on units 1, 2: [x, y] vs [x, y] → 1.
    # a-c on units 1, 3: [x, x] vs [y, x]: p_o = 1/2, p_e = 1 * 1/2 → 0.
    # b-c on units 1, 4: [x, y] vs [y, y]: p_o = 1/2, p_e = 1/2 * 1 → 0.
    assert pairwise_kappa(units) == [
        PairKappa(coder_a="a", coder_b="b", kappa=1.0, n=2),
        PairKappa(coder_a="a", coder_b="c", kappa=0.0, n=2),
        PairKappa(coder_a="b", coder_b="c", kappa=0.0, n=2),
    ]
