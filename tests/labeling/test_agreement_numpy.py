"""The NumPy agreement functions give the reference functions' figures (to 1e-9) on random data."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labeling import agreement


def set_units(max_label: int = 9) -> st.SearchStrategy[dict[int, dict[int, frozenset[int]]]]:
    """Up to 40 units, coders 0..6 (units with one coder or none are left out by the functions), labels 0..max."""
    sets = st.frozensets(st.integers(0, max_label), max_size=4)
    return st.dictionaries(st.integers(0, 10_000), st.dictionaries(st.integers(0, 6), sets, max_size=5), max_size=40)


def close(a: float | None, b: float | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and abs(a - b) <= 1e-9)


@settings(max_examples=200, deadline=None)
@given(set_units())
def test_masi_alpha_matches_the_reference(units):
    expected = agreement.krippendorff_alpha(units, agreement.masi_distance)
    assert close(agreement.masi_alpha_np(agreement.encode_sets(units)), expected)


@settings(max_examples=50, deadline=None)
@given(set_units(max_label=150))  # more labels than one 64-bit word holds
def test_masi_alpha_over_several_words_matches_the_reference(units):
    expected = agreement.krippendorff_alpha(units, agreement.masi_distance)
    assert close(agreement.masi_alpha_np(agreement.encode_sets(units)), expected)


@settings(max_examples=200, deadline=None)
@given(set_units())
def test_coder_similarity_matches_the_reference(units):
    expected = agreement.coder_similarity(units, agreement.masi_distance)
    got = agreement.coder_similarity_np(agreement.encode_sets(units))
    assert set(got) == set(expected)
    for coder, (similarity, n) in expected.items():
        assert got[coder][1] == n and close(got[coder][0], similarity)


@settings(max_examples=200, deadline=None)
@given(set_units())
def test_pairwise_kappa_matches_the_reference(units):
    expected = agreement.pairwise_kappa(units)
    got = agreement.pairwise_kappa_np(agreement.encode_sets(units))
    assert [(p.coder_a, p.coder_b, p.n) for p in got] == [(p.coder_a, p.coder_b, p.n) for p in expected]
    assert all(close(a.kappa, b.kappa) for a, b in zip(got, expected, strict=True))


votes = st.one_of(st.integers(0, 8), st.sampled_from(["tie", "all_bad"]))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(), st.dictionaries(st.integers(0, 6), votes, max_size=5), max_size=40))
def test_nominal_alpha_matches_the_reference(units):
    assert close(agreement.nominal_alpha_np(units), agreement.krippendorff_alpha(units))


@settings(max_examples=200, deadline=None)
@given(set_units(), st.lists(st.sampled_from(["user", "assistant", "both"]), min_size=10, max_size=10), st.data())
def test_binary_alphas_match_the_reference_patterns(units, label_roles, data):
    """Per label, present/absent per unit and coder over the units whose role it applies to (as the dashboard
    counts them): the reference is alpha_from_patterns over those units' patterns."""
    coded = {u: coders for u, coders in units.items() if len(coders) >= 2}
    roles = {u: data.draw(st.sampled_from(["user", "assistant"])) for u in coded}
    # Labels are only used where they apply (tag_add refuses the others).
    coded = {
        u: {c: frozenset(x for x in s if label_roles[x] in ("both", roles[u])) for c, s in coders.items()}
        for u, coders in coded.items()
    }
    order = list(coded)
    group_of = {"user": 0, "assistant": 1}
    used_unit = [i for i, u in enumerate(order) for s in coded[u].values() for _ in s]
    used_label = [x for u in order for s in coded[u].values() for x in sorted(s)]
    applies = np.array([[r in ("both", role) for r in label_roles] for role in ("user", "assistant")])
    got = agreement.binary_alphas_np(
        sizes=np.array([len(coded[u]) for u in order], dtype=np.int64),
        groups=np.array([group_of[roles[u]] for u in order], dtype=np.int64),
        applies=applies,
        used_unit=np.array(used_unit, dtype=np.int64),
        used_label=np.array(used_label, dtype=np.int64),
    )
    for label, role in enumerate(label_roles):
        patterns: Counter[tuple[int, ...]] = Counter()
        positive = 0
        for u in order:
            if role not in ("both", roles[u]):
                continue
            ones = sum(label in s for s in coded[u].values())
            positive += ones > 0
            patterns[(1,) * ones + (0,) * (len(coded[u]) - ones)] += 1
        expected = agreement.alpha_from_patterns(patterns)
        assert close(got[label].alpha, expected), (label, got[label], expected)
        assert (got[label].units, got[label].positive) == (sum(patterns.values()), positive)


def test_masi_distances_are_the_reference_distances_bit_for_bit():
    sets = [frozenset(), frozenset({1}), frozenset({1, 2}), frozenset({2, 3}), frozenset({4}), frozenset({1, 2, 3})]
    coded = agreement.encode_sets({0: dict(enumerate(sets))})
    pairs: Any = [(a, b) for a in range(len(sets)) for b in range(len(sets))]
    got = agreement.masi_distances(
        coded.bits[coded.value[[a for a, _ in pairs]]], coded.bits[coded.value[[b for _, b in pairs]]]
    )
    assert list(got) == [agreement.masi_distance(sets[a], sets[b]) for a, b in pairs]


def test_no_pairable_unit_is_none():
    coded = agreement.encode_sets({1: {"a": {1}}})
    assert agreement.masi_alpha_np(coded) is None and agreement.pairwise_kappa_np(coded) == []
    assert agreement.nominal_alpha_np({1: {"a": 1}}) is None


@pytest.mark.parametrize("value", [1, "tie"])
def test_nominal_alpha_of_unanimous_votes_is_one(value):
    assert agreement.nominal_alpha_np({1: {"a": value, "b": value}, 2: {"a": value, "c": value}}) == 1.0
