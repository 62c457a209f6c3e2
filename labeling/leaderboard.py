"""The arena leaderboard's maths: Bradley-Terry ratings with bootstrap intervals, win rates, rates per 100 turns.

Pure NumPy and scikit-learn, no Django: `labeling.leaderboard_data` turns a study into the arrays, this module
turns the arrays into figures (docs/leaderboard.md has the method).

Battles arrive aggregated, never one row per battle: `counts[p] = (wins of i, wins of j, ties)` for each pair
`pairs[p] = (i, j)` with i < j. A tie (and a "both bad") is half a win for each side, as Chatbot Arena counts it.
The fit is a logistic regression without intercept on two weighted rows per pair (x = e_i − e_j; y = 1 with
weight wins_i + ties/2, y = 0 with weight wins_j + ties/2), which is the Bradley-Terry likelihood; scikit-learn's
`LogisticRegression` maximises it (Chatbot Arena's `compute_mle_elo` does the same on one row per battle). The
coefficients are put on the Elo scale (400 / ln 10 per logit) and anchored: the models' mean is `ANCHOR`, or the
named anchor model is.

The bootstrap resamples the battles with replacement, which for aggregated counts is one multinomial draw of all
the cells at once (n = the number of battles, p = each cell's share): a million battles cost the same as a
thousand, and 1,000 rounds are 1,000 fits of a few dozen rows.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

SCALE = 400 / math.log(10)  # Elo points per logit: a 400-point gap is 10:1 odds
ANCHOR = 1000.0
# Large enough to be no prior on any study size, small enough that a model that never lost gets a finite rating.
C_PENALTY = 1e6
Z95 = 1.959963984540054

# Outcomes of one battle, as `leaderboard_data` reads them from the votes.
A_WINS, B_WINS, TIE, BOTH_BAD = 0, 1, 2, 3


@dataclass(frozen=True)
class Aggregated:
    """Battles reduced to counts: `pairs` (P, 2) model indices i < j; `counts` (P, 3) wins of i, wins of j, ties
    (both kinds)."""

    pairs: np.ndarray
    counts: np.ndarray
    n_models: int

    @property
    def battles(self) -> int:
        return int(self.counts.sum())


def aggregate(model_a: np.ndarray, model_b: np.ndarray, outcome: np.ndarray, n_models: int) -> Aggregated:
    """Battles (one entry each; model indices and `A_WINS`…`BOTH_BAD`) as counts per unordered pair, in one
    `bincount`: the memory of the result does not grow with the battles."""
    weights = np.ones(len(model_a), dtype=np.int64)
    return aggregate_weighted(model_a, model_b, outcome, weights, n_models)


def _cells(a: np.ndarray, b: np.ndarray, outcome: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each battle counts: the pair (i, j) with i < j, and the column, 0 if i won, 1 if j won, 2 for a tie
    (a battle stored as (b, a) is swapped, and its winner with it)."""
    swap = a > b
    column = np.where(outcome >= TIE, 2, np.where((outcome == A_WINS) != swap, 0, 1))
    return np.where(swap, b, a), np.where(swap, a, b), column


def aggregate_weighted(
    model_a: np.ndarray, model_b: np.ndarray, outcome: np.ndarray, weight: np.ndarray, n_models: int
) -> Aggregated:
    """`aggregate` for rows that already stand for `weight` battles each (a GROUP BY's counts)."""
    a, b, o = (np.asarray(x, dtype=np.int64) for x in (model_a, model_b, outcome))
    w = np.asarray(weight, dtype=np.int64)
    if np.any(a == b):
        raise ValueError("a battle needs two different models")
    i, j, column = _cells(a, b, o)
    flat = np.bincount((i * n_models + j) * 3 + column, weights=w, minlength=n_models * n_models * 3)
    cells = flat.astype(np.int64).reshape(n_models * n_models, 3)
    seen = np.flatnonzero(cells.sum(axis=1))
    pairs = np.stack([seen // n_models, seen % n_models], axis=1) if len(seen) else np.zeros((0, 2), np.int64)
    return Aggregated(pairs=pairs, counts=cells[seen], n_models=n_models)


def _design(pairs: np.ndarray, n_models: int) -> np.ndarray:
    """Two rows per pair, x = e_i − e_j: the first for i's half wins (y = 1), the second for j's (y = 0)."""
    rows = np.zeros((2 * len(pairs), n_models))
    index = np.arange(len(pairs))
    for half in (0, len(pairs)):
        rows[half + index, pairs[:, 0]] = 1.0
        rows[half + index, pairs[:, 1]] = -1.0
    return rows


def _anchor(beta: np.ndarray, present: np.ndarray, anchor: int | None) -> np.ndarray:
    ratings = SCALE * beta
    offset = ratings[anchor] if anchor is not None else ratings[present].mean()
    return ANCHOR + ratings - offset


def _fit(design: np.ndarray, counts: np.ndarray, present: np.ndarray, anchor: int | None) -> np.ndarray:
    half_ties = counts[:, 2] / 2
    weight = np.concatenate([counts[:, 0] + half_ties, counts[:, 1] + half_ties])
    target = np.concatenate([np.ones(len(counts)), np.zeros(len(counts))])
    model = LogisticRegression(C=C_PENALTY, fit_intercept=False, solver="newton-cholesky", tol=1e-8, max_iter=200)
    # Newton on a few dozen rows is exact in a handful of steps; the checks sklearn runs on every fit cost more
    # than the fit (1,000 bootstrap rounds), and the input is ours.
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(design, target, sample_weight=weight)
    return _anchor(model.coef_[0], present, anchor)


def bt_ratings(data: Aggregated, *, anchor: int | None = None) -> np.ndarray:
    """Bradley-Terry ratings on the Elo scale, one per model index (NaN for a model without battles); the mean
    over the models with battles is `ANCHOR`, or model `anchor`'s rating is."""
    present = _present(data)
    ratings = np.full(data.n_models, np.nan)
    if data.battles == 0 or present.sum() < 2:
        ratings[present] = ANCHOR
        return ratings
    fitted = _fit(_design(data.pairs, data.n_models), data.counts.astype(float), present, anchor)
    ratings[present] = fitted[present]
    return ratings


def _present(data: Aggregated) -> np.ndarray:
    present = np.zeros(data.n_models, dtype=bool)
    present[data.pairs[data.counts.sum(axis=1) > 0].ravel()] = True
    return present


def bt_bootstrap(
    data: Aggregated, *, rounds: int = 1000, seed: int = 0, anchor: int | None = None, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval (lower, upper) of each model's rating: the battles resampled with replacement
    `rounds` times (one multinomial draw over the count cells per round, seeded) and refitted. NaN for a model
    without battles; equal to the rating when there are no rounds or only one model."""
    present = _present(data)
    lower, upper = np.full(data.n_models, np.nan), np.full(data.n_models, np.nan)
    if rounds <= 0 or data.battles == 0 or present.sum() < 2:
        point = bt_ratings(data, anchor=anchor)
        return point.copy(), point.copy()
    rng = np.random.default_rng(seed)
    flat = data.counts.ravel()
    draws = rng.multinomial(data.battles, flat / flat.sum(), size=rounds).reshape(rounds, *data.counts.shape)
    design = _design(data.pairs, data.n_models)
    samples = np.empty((rounds, data.n_models))
    for r in range(rounds):
        # A model that lost every resampled battle is still fitted (the penalty keeps it finite).
        samples[r] = _fit(design, draws[r].astype(float), present, anchor)
    tail = (1 - level) / 2 * 100
    lower[present] = np.percentile(samples[:, present], tail, axis=0)
    upper[present] = np.percentile(samples[:, present], 100 - tail, axis=0)
    return lower, upper


def cluster_counts(
    data: Aggregated,
    model_a: np.ndarray,
    model_b: np.ndarray,
    outcome: np.ndarray,
    weight: np.ndarray,
    cluster: np.ndarray,
) -> np.ndarray:
    """The counts of `data` split by cluster (a rater): (C, P, 3), C the number of distinct `cluster` values, P and
    the columns as `data.counts` (which they sum to). The rows are the same battles `data` was aggregated from."""
    a, b, o, w = (np.asarray(x, dtype=np.int64) for x in (model_a, model_b, outcome, weight))
    _, which = np.unique(np.asarray(cluster, dtype=np.int64), return_inverse=True)
    i, j, column = _cells(a, b, o)
    lookup = np.full(data.n_models * data.n_models, -1, dtype=np.int64)
    lookup[data.pairs[:, 0] * data.n_models + data.pairs[:, 1]] = np.arange(len(data.pairs))
    out = np.zeros((int(which.max()) + 1 if len(which) else 0, len(data.pairs), 3), dtype=np.int64)
    np.add.at(out, (which, lookup[i * data.n_models + j], column), w)
    return out


def bt_bootstrap_clustered(
    data: Aggregated,
    clusters: np.ndarray,
    *,
    rounds: int = 1000,
    seed: int = 0,
    anchor: int | None = None,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """`bt_bootstrap` resampling whole raters instead of single battles: each round draws the C raters of
    `clusters` (`cluster_counts`) with replacement and refits on the sum of their counts.

    A rater's votes are not independent (their taste, their scenarios); when a few raters cast most of the votes,
    the battle bootstrap's intervals are too narrow and these are the honest ones. NaN for every model with fewer
    than two raters (nothing to resample), and for a model in the rounds where no drawn rater judged it.
    """
    present = _present(data)
    lower, upper = np.full(data.n_models, np.nan), np.full(data.n_models, np.nan)
    if rounds <= 0 or len(clusters) < 2 or present.sum() < 2:
        return lower, upper
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(clusters), np.full(len(clusters), 1 / len(clusters)), size=rounds)
    design = _design(data.pairs, data.n_models)
    samples = np.full((rounds, data.n_models), np.nan)
    for r in range(rounds):
        counts = np.tensordot(draws[r], clusters, axes=1)
        here = _present(Aggregated(pairs=data.pairs, counts=counts, n_models=data.n_models))
        if here.sum() < 2:
            continue
        fitted = _fit(design, counts.astype(float), here, anchor if anchor is None or here[anchor] else None)
        samples[r, here] = fitted[here]
    tail = (1 - level) / 2 * 100
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a model no drawn rater judged in any round: NaN
        lower[present] = np.nanpercentile(samples[:, present], tail, axis=0)
        upper[present] = np.nanpercentile(samples[:, present], 100 - tail, axis=0)
    return lower, upper


@dataclass(frozen=True)
class Rating:
    model: int
    rating: float
    lower: float
    upper: float
    battles: int
    wins: int
    losses: int
    ties: int

    @property
    def win_rate(self) -> float | None:
        """Wins plus half the ties, over the battles."""
        return (self.wins + self.ties / 2) / self.battles if self.battles else None


def ratings_table(data: Aggregated, *, rounds: int = 1000, seed: int = 0, anchor: int | None = None) -> list[Rating]:
    """Every model with battles: its rating, interval and record, best first."""
    point = bt_ratings(data, anchor=anchor)
    lower, upper = bt_bootstrap(data, rounds=rounds, seed=seed, anchor=anchor)
    record = np.zeros((data.n_models, 3), dtype=np.int64)  # wins, losses, ties
    for (i, j), (wins_i, wins_j, ties) in zip(data.pairs, data.counts, strict=True):
        record[i] += (wins_i, wins_j, ties)
        record[j] += (wins_j, wins_i, ties)
    rows = [
        Rating(
            model=m,
            rating=float(point[m]),
            lower=float(lower[m]),
            upper=float(upper[m]),
            battles=int(record[m].sum()),
            wins=int(record[m, 0]),
            losses=int(record[m, 1]),
            ties=int(record[m, 2]),
        )
        for m in range(data.n_models)
        if not math.isnan(point[m])
    ]
    return sorted(rows, key=lambda r: (-r.rating, r.model))


def win_matrix(data: Aggregated) -> tuple[np.ndarray, np.ndarray]:
    """(battles, row's win rate) as (M, M) matrices: `rate[i, j]` is i's wins plus half the ties over its battles
    against j (NaN where they never met)."""
    battles = np.zeros((data.n_models, data.n_models), dtype=np.int64)
    score = np.zeros((data.n_models, data.n_models))
    for (i, j), (wins_i, wins_j, ties) in zip(data.pairs, data.counts, strict=True):
        battles[i, j] = battles[j, i] = wins_i + wins_j + ties
        score[i, j], score[j, i] = wins_i + ties / 2, wins_j + ties / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(battles > 0, score / np.maximum(battles, 1), np.nan)
    return battles, rate


def wilson(hits: float, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Wilson score interval of a proportion (None, None without trials); right at 0 and n, where the normal
    interval collapses to a point."""
    if n <= 0:
        return None, None
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Rate:
    """`hits` of `turns` turns (a turn with the act, or a reply the user reacted to so), per 100, Wilson 95%."""

    hits: int
    turns: int

    @property
    def per_100(self) -> float | None:
        return 100 * self.hits / self.turns if self.turns else None

    @property
    def interval(self) -> tuple[float | None, float | None]:
        low, high = wilson(self.hits, self.turns)
        return (100 * low if low is not None else None, 100 * high if high is not None else None)
