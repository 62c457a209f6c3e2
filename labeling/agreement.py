"""Inter-rater agreement: Krippendorff's alpha, MASI distance, Cohen's kappa. Pure Python, no Django.

Data come as *units* (a turn, a comparison, any item coded) mapping to ``{coder: value}``. A coder
who did not code a unit is simply absent from its mapping, which is how missing data is expressed.

Undefined cases are answered explicitly rather than with NaN, so a dashboard can print them:

* no pairable values at all (no unit with two or more values) → ``None``: nothing was measured;
* every value the same (expected disagreement ``D_e == 0``) → alpha ``1.0`` when the observed
  disagreement is 0 too (it always is for a distance that is 0 between equal values): the coders
  never disagreed, but alpha carries no information about reliability beyond that;
* kappa with chance agreement ``p_e == 1`` (both coders used one and the same category for every
  item, hence ``p_o == 1``) → ``1.0``, by the same reasoning.

References: K. Krippendorff, *Computing Krippendorff's Alpha-Reliability* (2011); R. Passonneau,
*Measuring agreement on set-valued items (MASI) for semantic and pragmatic annotation* (LREC 2006);
J. Cohen, *A coefficient of agreement for nominal scales* (1960).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, TypeVar

V = TypeVar("V", bound=Hashable)
# {unit: {coder: value}}; units and coders are any hashable ids (Mapping is invariant in its keys).
Units = Mapping[Any, Mapping[Any, V]]
Distance = Callable[[V, V], float]


def nominal_distance(a: Hashable, b: Hashable) -> float:
    """0 for equal values, 1 otherwise: the difference function of nominal data."""
    return 0.0 if a == b else 1.0


def masi_distance(a: Iterable[Hashable], b: Iterable[Hashable]) -> float:
    """MASI distance between two label sets: ``1 - Jaccard * M`` (Passonneau 2006).

    ``M`` (monotonicity) is 1 when the sets are identical, 2/3 when one is a subset of the other,
    1/3 when they overlap but neither contains the other, 0 when they are disjoint. Two empty sets
    are identical (distance 0); an empty set against a non-empty one is at distance 1.
    """
    first, second = frozenset(a), frozenset(b)
    if first == second:
        return 0.0
    union = first | second
    common = first & second
    jaccard = len(common) / len(union)
    if first <= second or second <= first:
        monotonicity = 2 / 3
    elif common:
        monotonicity = 1 / 3
    else:
        monotonicity = 0.0
    return 1.0 - jaccard * monotonicity


def unit_patterns(units: Units[V]) -> Counter[tuple[V, ...]]:
    """The units as value patterns (the unit's values in a canonical order) with their counts.

    Units with the same multiset of values contribute alike, so alpha is computed once per pattern.
    Sorting by hash is enough for that: equal values have equal hashes (a hash collision between
    different values only splits one pattern in two, which changes nothing in the result).
    """
    return Counter(tuple(sorted(coded.values(), key=hash)) for coded in units.values() if len(coded) >= 2)


def coincidences(patterns: Mapping[tuple[V, ...], int]) -> dict[tuple[V, V], float]:
    """Krippendorff's coincidence matrix ``o[c, k]`` from value patterns and their unit counts.

    Each unit with ``m >= 2`` values contributes, for every ordered pair of values from different
    coders, ``1 / (m - 1)``; so each pairable value adds exactly 1 to its row total ``n_c``.
    Patterns with fewer than two values are ignored.
    """
    matrix: dict[tuple[V, V], float] = defaultdict(float)
    for values, units in patterns.items():
        m = len(values)
        if m < 2 or units <= 0:
            continue
        counts = Counter(values)
        for c, n_c in counts.items():
            for k, n_k in counts.items():
                pairs = n_c * (n_k - 1) if c == k else n_c * n_k
                if pairs:
                    matrix[c, k] += units * pairs / (m - 1)
    return dict(matrix)


def alpha_from_patterns(
    patterns: Mapping[tuple[V, ...], int], distance: Distance[V] = nominal_distance
) -> float | None:
    """Krippendorff's alpha, ``1 - D_o / D_e``, for units given as value patterns with counts.

    ``D_o = (1/n) Σ_c Σ_k o[c,k] δ(c,k)`` and ``D_e = 1/(n(n-1)) Σ_c Σ_k n_c n_k δ(c,k)``, where
    ``o`` is the coincidence matrix, ``n_c`` its row totals and ``n`` the number of pairable
    values. ``distance`` is the difference function δ. Returns ``None`` when no unit has two
    values, ``1.0`` when ``D_e == 0`` (see module notes). Large binary data (one label present or
    absent per turn and rater) has a handful of patterns, such as ``(1, 0, 0): 120``.
    """
    matrix = coincidences(patterns)
    totals: dict[V, float] = defaultdict(float)
    for (c, _k), o in matrix.items():
        totals[c] += o
    n = sum(totals.values())
    if n < 2:  # no pairable unit
        return None
    observed = sum(o * distance(c, k) for (c, k), o in matrix.items()) / n
    expected = sum(n_c * n_k * distance(c, k) for c, n_c in totals.items() for k, n_k in totals.items())
    expected /= n * (n - 1)
    if expected == 0:  # every pairable value alike: then observed == 0 as well
        return 1.0
    return 1.0 - observed / expected


def krippendorff_alpha(units: Units[V], distance: Distance[V] = nominal_distance) -> float | None:
    """Krippendorff's alpha over ``{unit: {coder: value}}``; units with fewer than 2 values are ignored.

    ``distance`` is nominal by default; pass :func:`masi_distance` for label sets (or use
    :func:`masi_alpha`). See :func:`alpha_from_patterns` for the formula and the edge cases.
    """
    return alpha_from_patterns(unit_patterns(units), distance)


def masi_alpha(units: Mapping[Any, Mapping[Any, Iterable[Hashable]]]) -> float | None:
    """Alpha for multi-label data: each value is a set of labels, compared with MASI."""
    as_sets = {unit: {coder: frozenset(labels) for coder, labels in coded.items()} for unit, coded in units.items()}
    return krippendorff_alpha(as_sets, masi_distance)


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float | None:
    """Cohen's kappa for two coders' categories on the same items (``first[i]`` vs ``second[i]``).

    ``(p_o - p_e) / (1 - p_e)`` with ``p_e = Σ_c p_1(c) p_2(c)`` from each coder's own marginals.
    Returns ``None`` for no items and ``1.0`` when ``p_e == 1`` (see module notes).
    """
    if len(first) != len(second):
        raise ValueError(f"The coders rated different numbers of items ({len(first)} and {len(second)}).")
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second, strict=True)) / n
    counts_first, counts_second = Counter(first), Counter(second)
    expected = sum(count * counts_second[c] for c, count in counts_first.items()) / (n * n)
    if expected == 1:
        return 1.0
    return (observed - expected) / (1 - expected)


@dataclass(frozen=True)
class PairKappa:
    """Cohen's kappa between two coders on the ``n`` units both of them coded."""

    coder_a: Any
    coder_b: Any
    kappa: float | None
    n: int


def pairwise_kappa(units: Units[V]) -> list[PairKappa]:
    """Cohen's kappa for every pair of coders that share at least one unit, on their shared units.

    Coders are ordered by ``str()`` so the result is stable; each pair appears once.
    """
    shared: dict[tuple[Hashable, Hashable], tuple[list[V], list[V]]] = {}
    for coded in units.values():
        for a, b in combinations(sorted(coded, key=str), 2):
            first, second = shared.setdefault((a, b), ([], []))
            first.append(coded[a])
            second.append(coded[b])
    return [
        PairKappa(coder_a=a, coder_b=b, kappa=cohen_kappa(first, second), n=len(first))
        for (a, b), (first, second) in sorted(shared.items(), key=lambda item: (str(item[0][0]), str(item[0][1])))
    ]


# --- one coder against the others (per-rater figures) ------------------------------------------


def jaccard(a: Iterable[Hashable], b: Iterable[Hashable]) -> float:
    """``|a ∩ b| / |a ∪ b|`` between two label sets; two empty sets are identical (1.0)."""
    first, second = frozenset(a), frozenset(b)
    union = first | second
    return len(first & second) / len(union) if union else 1.0


def coder_similarity(units: Units[V], distance: Distance[V] = nominal_distance) -> dict[Any, tuple[float, int]]:
    """Each coder's mean similarity ``1 - distance`` to the other coders of the units they share.

    Per coder: the mean over every (unit, other coder) pair, and the number of units with at least one
    other coder. With :func:`masi_distance` on label sets this is a rater's tag agreement with the rest.
    Coders who never share a unit are absent.
    """
    totals: dict[Any, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])  # similarity sum, pairs, units
    for coded in units.values():
        if len(coded) < 2:
            continue
        for coder, value in coded.items():
            row = totals[coder]
            for other, other_value in coded.items():
                if other != coder:
                    row[0] += 1.0 - distance(value, other_value)
                    row[1] += 1
            row[2] += 1
    return {coder: (total / pairs, int(n)) for coder, (total, pairs, n) in totals.items()}


def majority_agreement(units: Units[V]) -> dict[Any, tuple[int, int]]:
    """Per coder, (units where their value is the other coders' most frequent value, units with at least
    one other coder). When the others are split evenly, matching any of their top values counts."""
    found: dict[Any, list[int]] = defaultdict(lambda: [0, 0])
    for coded in units.values():
        if len(coded) < 2:
            continue
        for coder, value in coded.items():
            others = Counter(v for other, v in coded.items() if other != coder)
            top = max(others.values())
            found[coder][0] += others[value] == top
            found[coder][1] += 1
    return {coder: (agreeing, n) for coder, (agreeing, n) in found.items()}
