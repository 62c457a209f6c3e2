"""Inter-rater agreement: Krippendorff's alpha, MASI distance, Cohen's kappa. Pure Python (and NumPy), no Django.

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

import numpy as np

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


# --- the study's definitions: what a unit and a value are, for votes and for tags -------------------
#
# The dashboard (labeling.dashboard) and the dataset card (exports.card) both build their units with these
# functions, so the two report the same figure on the same data (docs/exports.md, "Agreement").


def vote_code(choice: str, position: int | None) -> str:
    """A vote as the category vote agreement counts: the chosen candidate's slot letter (position 0 → "A"),
    else the choice ("tie", "all_bad"). By slot, not by the chosen reply's id: ids make every branch point a
    set of categories of its own, which inflates alpha (coin-flipping raters scored ~0.5 that way)."""
    if choice == "candidate" and position is not None:
        return chr(ord("A") + position)
    return choice


def vote_units(votes: Iterable[tuple[Hashable, Hashable, str]]) -> dict[Any, dict[Any, str]]:
    """``{branch point: {rater: code}}`` from ``(branch point, rater, vote_code(...))`` in the order cast, over
    the branch points (user turns) voted by two raters or more. A rater who voted twice at a branch point (a
    live vote and a review vote) counts once, with their last vote."""
    units: dict[Any, dict[Any, str]] = defaultdict(dict)
    for unit, rater, code in votes:
        units[unit][rater] = code
    return {unit: coded for unit, coded in units.items() if len(coded) >= 2}


def tag_units(
    covered: Iterable[tuple[Hashable, Hashable]], tags: Iterable[tuple[Hashable, Hashable, Hashable]]
) -> dict[Any, dict[Any, frozenset[Hashable]]]:
    """``{turn: {rater: label set}}`` over the turns coded by two raters or more. A rater *coded* a turn when
    they cover it (``covered``: (turn, rater) pairs, such as a reviewer's assigned turns) or put a tag on it
    (``tags``: (turn, rater, label)); a covering rater with no tag there coded it as the empty set ("no
    label"), which is as much a judgement as a tag."""
    coded: dict[Any, dict[Any, set[Hashable]]] = defaultdict(dict)
    for turn, rater in covered:
        coded[turn].setdefault(rater, set())
    for turn, rater, label in tags:
        coded[turn].setdefault(rater, set()).add(label)
    return {
        turn: {rater: frozenset(labels) for rater, labels in raters.items()}
        for turn, raters in coded.items()
        if len(raters) >= 2
    }


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


# --- the same figures with NumPy, for studies of any size ----------------------------------------
#
# The functions above are the reference: short, and checked against numbers computed by hand. The ones
# below give the same results (tests/labeling/test_agreement_numpy.py checks them against the reference on
# random data) in array operations, for the dashboard of a large study: label sets become bit-sets (label →
# bit position, a set → W uint64 words), MASI distances come from popcounts of ANDed words, and each sum over
# coder pairs is one gather over index arrays. Nominal alpha needs no pair at all: D_e n (n-1) = n² - Σ n_c².


@dataclass(frozen=True)
class CodedSets:
    """Units of label sets as arrays: one row per (unit, coder) of the units with two coders or more,
    the rows of a unit next to each other.

    ``unit``/``coder``/``value`` index units, ``coders`` and the distinct ``sets``; ``bits[v]`` is set ``v``
    as a bit-set of W uint64 words; ``starts``/``sizes`` give each unit's rows."""

    unit: np.ndarray
    coder: np.ndarray
    value: np.ndarray
    bits: np.ndarray
    coders: list[Any]
    sets: list[frozenset[Hashable]]
    starts: np.ndarray
    sizes: np.ndarray

    @property
    def n(self) -> int:
        return len(self.value)


def encode_sets(units: Mapping[Any, Mapping[Any, Iterable[Hashable]]]) -> CodedSets:
    """The units with two coders or more, as arrays (see :class:`CodedSets`)."""
    coder_index: dict[Any, int] = {}
    set_index: dict[frozenset[Hashable], int] = {}
    unit_col: list[int] = []
    coder_col: list[int] = []
    value_col: list[int] = []
    sizes: list[int] = []
    for coded in units.values():
        if len(coded) < 2:
            continue
        u = len(sizes)
        sizes.append(len(coded))
        for coder, labels in coded.items():
            unit_col.append(u)
            coder_col.append(coder_index.setdefault(coder, len(coder_index)))
            value_col.append(set_index.setdefault(frozenset(labels), len(set_index)))
    bit_of: dict[Hashable, int] = {}
    for labels in set_index:
        for label in labels:
            bit_of.setdefault(label, len(bit_of))
    words = max(1, -(-len(bit_of) // 64))
    bits = np.zeros((len(set_index), words), dtype=np.uint64)
    for labels, v in set_index.items():
        for label in labels:
            position = bit_of[label]
            bits[v, position // 64] |= np.uint64(1) << np.uint64(position % 64)
    size_array = np.asarray(sizes, dtype=np.int64)
    return CodedSets(
        unit=np.asarray(unit_col, dtype=np.int64),
        coder=np.asarray(coder_col, dtype=np.int64),
        value=np.asarray(value_col, dtype=np.int64),
        bits=bits,
        coders=list(coder_index),
        sets=list(set_index),
        starts=np.cumsum(size_array) - size_array,
        sizes=size_array,
    )


def masi_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """MASI distance between bit-sets, row by row (``first[i]`` against ``second[i]``, shapes (k, W)):
    the same floating-point operations as :func:`masi_distance`."""
    common = np.bitwise_count(first & second).sum(axis=-1, dtype=np.int64)
    size_a = np.bitwise_count(first).sum(axis=-1, dtype=np.int64)
    size_b = np.bitwise_count(second).sum(axis=-1, dtype=np.int64)
    union = size_a + size_b - common
    equal = (common == size_a) & (common == size_b)
    subset = (common == size_a) | (common == size_b)
    monotonicity = np.where(subset, 2 / 3, np.where(common > 0, 1 / 3, 0.0))
    jaccard = common / np.where(union == 0, 1, union)
    return np.where(equal, 0.0, 1.0 - jaccard * monotonicity)


def unit_pairs(starts: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (i, j) of every ordered pair of different rows within a unit, units given by their first
    row and size: one block of index arithmetic per distinct unit size."""
    firsts: list[np.ndarray] = []
    seconds: list[np.ndarray] = []
    for m in np.unique(sizes):
        if m < 2:
            continue
        a, b = np.nonzero(~np.eye(m, dtype=bool))
        base = starts[sizes == m][:, None]
        firsts.append((base + a).ravel())
        seconds.append((base + b).ravel())
    if not firsts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(firsts), np.concatenate(seconds)


def _expected_masi(bits: np.ndarray, counts: np.ndarray, block: int = 1 << 21) -> float:
    """Σ_c Σ_k n_c n_k δ(c, k) over the distinct sets, a block of rows of the V × V matrix at a time."""
    total = 0.0
    v = len(bits)
    rows = max(1, block // max(v, 1))
    for start in range(0, v, rows):
        part = bits[start : start + rows]
        first = np.repeat(part, v, axis=0)
        second = np.tile(bits, (len(part), 1))
        distances = masi_distances(first, second).reshape(len(part), v)
        total += float((counts[start : start + rows, None] * distances * counts[None, :]).sum())
    return total


def masi_alpha_np(coded: CodedSets) -> float | None:
    """Krippendorff's alpha with MASI distance: ``krippendorff_alpha(units, masi_distance)``."""
    n = coded.n
    if n < 2:
        return None
    i, j = unit_pairs(coded.starts, coded.sizes)
    weights = 1.0 / (coded.sizes[coded.unit[i]] - 1)
    observed = float((masi_distances(coded.bits[coded.value[i]], coded.bits[coded.value[j]]) * weights).sum()) / n
    counts = np.bincount(coded.value, minlength=len(coded.bits)).astype(np.float64)
    expected = _expected_masi(coded.bits, counts) / (n * (n - 1))
    if expected == 0:
        return 1.0
    return 1.0 - observed / expected


def coder_similarity_np(coded: CodedSets) -> dict[Any, tuple[float, int]]:
    """Each coder's mean MASI similarity to the other coders: ``coder_similarity(units, masi_distance)``."""
    i, j = unit_pairs(coded.starts, coded.sizes)
    similarity = 1.0 - masi_distances(coded.bits[coded.value[i]], coded.bits[coded.value[j]])
    c = len(coded.coders)
    totals = np.bincount(coded.coder[i], weights=similarity, minlength=c)
    pairs = np.bincount(coded.coder[i], minlength=c)
    units = np.bincount(coded.coder, minlength=c)
    return {coder: (float(totals[k] / pairs[k]), int(units[k])) for k, coder in enumerate(coded.coders) if units[k]}


def pairwise_kappa_np(coded: CodedSets) -> list[PairKappa]:
    """Cohen's kappa between every two coders on their shared units, each distinct set a category:
    ``pairwise_kappa(units)``."""
    order = sorted(range(len(coded.coders)), key=lambda k: str(coded.coders[k]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    i, j = unit_pairs(coded.starts, coded.sizes)
    keep = rank[coded.coder[i]] < rank[coded.coder[j]]  # each unordered pair once, the str-first coder as a
    i, j = i[keep], j[keep]
    c, v = len(order), max(len(coded.bits), 1)
    pair_key = rank[coded.coder[i]] * c + rank[coded.coder[j]]
    keys, pair_of, n = np.unique(pair_key, return_inverse=True, return_counts=True)
    va, vb = coded.value[i], coded.value[j]
    agreeing = np.bincount(pair_of, weights=(va == vb).astype(np.float64), minlength=len(keys))
    # Σ_c count_a(c) count_b(c) per pair: each coder's marginals, joined on (pair, category).
    first, count_a = np.unique(pair_of * v + va, return_counts=True)
    second, count_b = np.unique(pair_of * v + vb, return_counts=True)
    _, at_a, at_b = np.intersect1d(first, second, assume_unique=True, return_indices=True)
    chance = np.bincount(first[at_a] // v, weights=count_a[at_a] * count_b[at_b], minlength=len(keys))
    result = []
    for k, key in enumerate(keys):
        total = int(n[k])
        observed = float(agreeing[k]) / total
        expected = float(chance[k]) / (total * total)
        kappa = 1.0 if expected == 1 else (observed - expected) / (1 - expected)
        a, b = coded.coders[order[key // c]], coded.coders[order[key % c]]
        result.append(PairKappa(coder_a=a, coder_b=b, kappa=kappa, n=total))
    return sorted(result, key=lambda p: (str(p.coder_a), str(p.coder_b)))


def nominal_alpha_np(units: Units[V]) -> float | None:
    """Krippendorff's alpha for nominal values: ``krippendorff_alpha(units)``, with no pair of values formed:
    ``D_o n = Σ_u (m_u² - Σ_c n_uc²) / (m_u - 1)`` and ``D_e n (n - 1) = n² - Σ_c n_c²``."""
    codes: dict[Hashable, int] = {}
    unit_col: list[int] = []
    value_col: list[int] = []
    u = 0
    for coded in units.values():
        if len(coded) < 2:
            continue
        for value in coded.values():
            unit_col.append(u)
            value_col.append(codes.setdefault(value, len(codes)))
        u += 1
    n = len(value_col)
    if n < 2:
        return None
    unit_of, value_of = np.asarray(unit_col, dtype=np.int64), np.asarray(value_col, dtype=np.int64)
    sizes = np.bincount(unit_of).astype(np.float64)
    _, first_rows, within = np.unique(unit_of * len(codes) + value_of, return_index=True, return_counts=True)
    same = np.bincount(unit_of[first_rows], weights=within.astype(np.float64) ** 2, minlength=len(sizes))
    observed = float(((sizes**2 - same) / (sizes - 1)).sum()) / n
    totals = np.bincount(value_of).astype(np.float64)
    expected = float(n * n - (totals**2).sum()) / (n * (n - 1))
    if expected == 0:
        return 1.0
    return 1.0 - observed / expected


@dataclass(frozen=True)
class BinaryAlpha:
    """One label's present/absent alpha over the units it applies to (``units``), ``positive`` of them with
    at least one coder using it."""

    alpha: float | None
    units: int
    positive: int


def binary_alphas_np(
    *, sizes: np.ndarray, groups: np.ndarray, applies: np.ndarray, used_unit: np.ndarray, used_label: np.ndarray
) -> list[BinaryAlpha]:
    """Per label, Krippendorff's alpha of present (1) / absent (0) per unit and coder, all labels at once.

    ``sizes[u]``: unit u's coders (≥ 2); ``groups[u]``: its group (a role), ``applies[g, l]``: whether label
    l counts on the units of group g (a unit where nobody used l counts only then); ``used_unit[x]``,
    ``used_label[x]``: one entry per (unit, coder, label) used. Binary data needs no coincidence matrix: with
    k of a unit's m coders using the label, ``o[0,1] = k (m - k) / (m - 1)``, ``n_1 = Σ k``, so
    ``D_o n = 2 Σ o[0,1]`` and ``D_e n (n - 1) = 2 n_0 n_1``."""
    labels = applies.shape[1]
    if labels == 0:
        return []
    key, ones = np.unique(used_unit * labels + used_label, return_counts=True)
    unit, label = key // labels, key % labels
    m = sizes[unit].astype(np.float64)
    cross = np.bincount(label, weights=ones * (m - ones) / (m - 1), minlength=labels)
    n_1 = np.bincount(label, weights=ones.astype(np.float64), minlength=labels)
    positive = np.bincount(label, minlength=labels)
    group_values = np.bincount(groups, weights=sizes.astype(np.float64), minlength=applies.shape[0])
    group_units = np.bincount(groups, minlength=applies.shape[0])
    n = group_values @ applies.astype(np.float64)
    units = group_units @ applies.astype(np.int64)
    results = []
    for k in range(labels):
        if n[k] < 2:
            results.append(BinaryAlpha(None, int(units[k]), int(positive[k])))
            continue
        n_0 = n[k] - n_1[k]
        expected = 2 * n_0 * n_1[k] / (n[k] * (n[k] - 1))
        alpha = 1.0 if expected == 0 else 1.0 - (2 * cross[k] / n[k]) / expected
        results.append(BinaryAlpha(float(alpha), int(units[k]), int(positive[k])))
    return results
