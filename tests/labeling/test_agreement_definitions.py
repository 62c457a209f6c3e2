"""The agreement definitions the dashboard and the dataset card share (`agreement.vote_units`, `tag_units`),
checked against the `krippendorff` package and NLTK."""

from __future__ import annotations

import random

import krippendorff
import numpy as np
import pytest
from nltk.metrics.agreement import AnnotationTask
from nltk.metrics.distance import masi_distance as nltk_masi

from labeling import agreement


def test_votes_are_coded_by_slot():
    assert [agreement.vote_code("candidate", 0), agreement.vote_code("candidate", 2)] == ["A", "C"]
    assert [agreement.vote_code("tie", None), agreement.vote_code("all_bad", None)] == ["tie", "all_bad"]


def test_a_raters_last_vote_counts_and_single_rater_units_are_left_out():
    units = agreement.vote_units([(1, "ann", "A"), (1, "bob", "B"), (1, "ann", "B"), (2, "ann", "A")])
    assert units == {1: {"ann": "B", "bob": "B"}}


def test_coin_flipping_raters_agree_by_chance_only():
    rng = random.Random(3)
    votes = [
        (unit, rater, agreement.vote_code("candidate", rng.randrange(2))) for unit in range(300) for rater in "xyz"
    ]
    by_slot = agreement.krippendorff_alpha(agreement.vote_units(votes))
    # The old coding: each branch point's replies have ids of their own.
    by_id = agreement.krippendorff_alpha(
        agreement.vote_units((unit, rater, f"{unit}-{code}") for unit, rater, code in votes)
    )
    assert by_slot is not None and abs(by_slot) < 0.1
    assert by_id is not None and by_id > 0.4


# Four turns, three raters: ann and bob covered every turn (reviewers), cat tagged turns 2 and 3 only.
COVERED = [(turn, rater) for turn in (1, 2, 3, 4) for rater in ("ann", "bob")]
TAGS = [
    (1, "ann", "ack"), (1, "bob", "ack"),
    (2, "ann", "ack"), (2, "ann", "repair"), (2, "bob", "repair"), (2, "cat", "ack"),
    (3, "cat", "repair"),
    (4, "bob", "ack"),
]  # fmt: skip
LABELS = ("ack", "repair")


def test_a_covering_rater_without_a_tag_codes_the_empty_set():
    units = agreement.tag_units(COVERED, TAGS)
    assert units[3] == {"ann": frozenset(), "bob": frozenset(), "cat": frozenset({"repair"})}
    assert units[4] == {"ann": frozenset(), "bob": frozenset({"ack"})}
    # Without the coverage, turns 3 and 4 have one coder each and drop out: the card's old figure.
    assert set(agreement.tag_units((), TAGS)) == {1, 2}


@pytest.mark.parametrize("label", LABELS)
def test_per_label_alpha_matches_the_krippendorff_package(label):
    units = agreement.tag_units(COVERED, TAGS)
    raters = ["ann", "bob", "cat"]
    binary = {turn: {r: int(label in labels) for r, labels in coded.items()} for turn, coded in units.items()}
    matrix = np.array([[binary[turn].get(r, np.nan) for turn in sorted(binary)] for r in raters], dtype=float)
    expected = krippendorff.alpha(reliability_data=matrix, level_of_measurement="nominal")
    assert agreement.krippendorff_alpha(binary) == pytest.approx(expected)


def test_masi_alpha_matches_nltk():
    units = agreement.tag_units(COVERED, TAGS)
    task = AnnotationTask(
        data=[(rater, str(turn), labels) for turn, coded in units.items() for rater, labels in coded.items()],
        # NLTK's MASI divides by the union: two empty sets (both "no label") are equal, distance 0.
        distance=lambda a, b: 0.0 if a == b else nltk_masi(a, b),
    )
    # NLTK rounds MASI's subset weight 2/3 to 0.67: equal to the third decimal.
    assert agreement.masi_alpha(units) == pytest.approx(task.alpha(), abs=1e-3)
    assert agreement.masi_alpha_np(agreement.encode_sets(units)) == pytest.approx(task.alpha(), abs=1e-3)
