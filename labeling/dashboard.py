"""Reads for a study's dashboard: agreement between raters, activity, suggestions, grounding rates.

A handful of aggregated queries, whatever the size of the study; the agreement figures are then
computed in Python over compact per-turn data (labeling.agreement).

Who coded a turn. A rater *coded* a turn when they have a confirmed tag on it (live or review
task, merged) or hold a review assignment (open or done) for its conversation that covers the
turn: the lived path (user turns and the replies the conversation continued from), or every
finished reply when the study reviews all branches. A covering rater with no tag on the turn
coded it as "no label". A live rater counts only on the turns they tagged: they were not asked
to tag every reply. An open assignment counts from the start, so a review in progress lowers
agreement until it is done; the review pass is the point of overlap, so we accept that. An expired
assignment covers nothing, and the tags its reviewer put before it expired do not count: they coded
part of a conversation and left, so their silence elsewhere is no "no label".

Choices, each as simple as the data allows:

* per-label alpha: binary present/absent per turn and coder, over turns with ≥ 2 coders and a
  role the label applies to (a user-only label is not "absent" from a reply);
* overall alpha: each coder's label set per turn, MASI distance;
* pairwise Cohen's kappa: each distinct label set is a category (strict: {a} against {a, b}
  is a plain disagreement; MASI alpha is the lenient figure);
* vote agreement: votes grouped by their user turn, the live rater's and the reviewers' (who give
  their own preference at each branch point), over user turns voted by ≥ 2 raters (a rater's last
  vote there counts); nominal alpha on value = the chosen candidate's slot ("A", "B", …), "tie" or
  "all_bad" (`agreement.vote_code`: by slot, not by reply id, which would give each branch point
  categories of its own and inflate alpha), and the number of unanimous turns. Strength is left out:
  "B, slight" and "B, clear" agree. The dataset card uses the same definition (`agreement.vote_units`);
* grounding rate: finished model replies (chosen or not, rewrites excluded) with at least one
  confirmed grounding-kind tag from anyone, per 100 replies, by model config (labels of kind
  behaviour, such as over-response or topic switch, are no grounding act and do not count); the human
  baseline is the same rate over the raters' own user turns. Untagged turns count as "no act",
  for replies and user turns alike.

Quality control. Excluded raters (`Participant.excluded`) are left out of every figure unless
`include_excluded`: their conversations (with every turn, vote and tag on them) and their own votes, tags
and reviews anywhere. Planted attention checks (`Turn.is_attention_check`) are never part of the model
figures, the coded turns or the tag counts, and a vote that failed one (`Comparison.attention_passed`
false: the rater chose the nonsense reply, or a tie) is left out of vote agreement. Per rater:

* gold accuracy: qualification answers passed (`GoldAnswer.passed`) and live attention checks passed,
  over all of them;
* vote agreement with others: the share of their votes, at branch points voted by two raters or more,
  that match the most frequent value among the *other* votes there (`agreement.majority_agreement`);
* tag agreement: mean MASI similarity (1 − distance) of their label set with each other coder's, over
  the turns coded by two raters or more (`agreement.coder_similarity`);
* median decision time: the median `Comparison.decision_ms` of their votes.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields
from typing import Any, TypeVar

import numpy as np
from django.contrib.auth import get_user_model
from django.db import connections
from django.db.models import Case, Count, Exists, IntegerField, Model, OuterRef, Q, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce

from annotate.models import Comparison, Conversation, Participant, Study, Turn
from labeling import agreement
from labeling.models import DashboardSnapshot, GoldAnswer, Label, ReviewAssignment, Tag
from labeling.selectors import REVIEWS_HOLDING_A_PLACE, labels_for

CONFIRMED = Q(status=Tag.Status.CONFIRMED)
SUGGESTION = Q(source=Tag.Source.SUGGESTION)
_M = TypeVar("_M", bound=Model)


@dataclass(frozen=True)
class LabelFigures:
    label: Label
    confirmed: int
    live: int
    review: int
    alpha: float | None  # binary present/absent, None when no turn has two coders
    alpha_turns: int  # turns with ≥ 2 coders the label applies to
    alpha_positive: int  # of those, turns where at least one coder used the label
    accepted: int  # suggestions confirmed by the rater
    rejected: int
    pending: int

    @property
    def decided(self) -> int:
        return self.accepted + self.rejected

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.decided if self.decided else None


@dataclass(frozen=True)
class PairFigures:
    rater_a: str
    rater_b: str
    kappa: float | None
    turns: int


@dataclass(frozen=True)
class RaterFigures:
    username: str
    conversations: int
    votes: int
    tags: int  # confirmed, live and review
    reviews: int
    median_decision_ms: float | None
    gold_passed: int = 0  # qualification answers and live attention checks passed
    gold_total: int = 0
    votes_agreeing: int = 0  # votes matching the other votes' most frequent value
    votes_compared: int = 0  # votes at branch points with another rater's vote
    tag_agreement: float | None = None  # mean MASI similarity with the other coders
    tag_turns: int = 0  # turns coded by them and someone else
    qualification_score: float | None = None
    flagged: bool = False
    excluded: bool = False

    @property
    def median_decision_s(self) -> float | None:
        return self.median_decision_ms / 1000 if self.median_decision_ms is not None else None

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_passed / self.gold_total if self.gold_total else None

    @property
    def vote_agreement(self) -> float | None:
        return self.votes_agreeing / self.votes_compared if self.votes_compared else None


@dataclass(frozen=True)
class VoteFigures:
    comparisons: int  # user turns voted by ≥ 2 raters (live and review votes)
    alpha: float | None
    unanimous: int


@dataclass(frozen=True)
class GroundingRate:
    name: str
    turns: int
    grounded: int

    @property
    def per_100(self) -> float | None:
        return 100 * self.grounded / self.turns if self.turns else None


@dataclass(frozen=True)
class StudyDashboard:
    study: Study
    conversations: int
    coded_turns: int  # turns with ≥ 2 coders: the units of agreement
    masi_alpha: float | None
    labels: list[LabelFigures]
    pairs: list[PairFigures]
    votes: VoteFigures
    raters: list[RaterFigures]
    model_rates: list[GroundingRate]
    user_baseline: GroundingRate
    excluded_raters: int = 0  # excluded raters in the study (left out unless include_excluded)
    include_excluded: bool = False


@dataclass(frozen=True)
class KindGroup:
    """The labels of one kind, for the page's labels table: grounding acts apart from non-grounding behaviours
    (an over-response is worth counting, but only grounding acts make the grounding rate)."""

    kind: str
    title: str
    rows: list[LabelFigures]


KIND_TITLES: dict[str, str] = {
    Label.Kind.GROUNDING: "Grounding acts (counted in the grounding rates)",
    Label.Kind.BEHAVIOUR: "Non-grounding behaviours (not counted in the grounding rates)",
    Label.Kind.FEEDBACK: "Implicit feedback signals",
    Label.Kind.OTHER: "Other",
}


def labels_by_kind(rows: list[LabelFigures]) -> list[KindGroup]:
    """`rows` grouped by their label's kind, in the kinds' declared order (each group in the taxonomy's order);
    kinds without labels are left out."""
    groups = [
        KindGroup(kind=kind, title=KIND_TITLES.get(kind, str(label)), rows=[r for r in rows if r.label.kind == kind])
        for kind, label in Label.Kind.choices
    ]
    unknown = [r for r in rows if r.label.kind not in Label.Kind.values]  # a kind no longer declared
    return [group for group in groups if group.rows] + ([KindGroup("", "Other", unknown)] if unknown else [])


def study_dashboard(*, study: Study, include_excluded: bool = False, reference: bool = False) -> StudyDashboard:
    """Every figure of the dashboard page, freshly computed, in a dozen queries whatever the size of the study.

    Excluded raters' work is left out unless `include_excluded` (see the module notes). The agreement maths run
    on NumPy arrays (`agreement.*_np`); `reference` runs the pure-Python reference functions instead (the same
    figures to 1e-9, slower: tests and bench/dashboard.py compare the two). The page reads a stored snapshot of
    this (`dashboard_to_json`, `labeling.services.dashboard_refresh`), not this function."""
    members = _members(study)
    excluded_all = _excluded(members)
    excluded = set() if include_excluded else excluded_all
    labels = labels_for(study)
    vote_units = _vote_units(study, excluded)
    grounded: set[int] | None = None
    if reference:
        label_counts, rater_tags = _tag_counts(study, excluded)
        coded, roles = _coded_turns(study, excluded)
        overlap = {turn_id: coders for turn_id, coders in coded.items() if len(coders) >= 2}
        set_units = {turn_id: {r: frozenset(s) for r, s in coders.items()} for turn_id, coders in overlap.items()}
        coded_turns = len(overlap)
        masi_alpha = agreement.krippendorff_alpha(set_units, agreement.masi_distance)
        kappas = agreement.pairwise_kappa(set_units)
        similarity = agreement.coder_similarity(set_units, agreement.masi_distance)
        label_figures = _label_figures(labels, label_counts, overlap, roles)
        vote_alpha = agreement.krippendorff_alpha(vote_units)
    else:
        confirmed, label_counts, rater_tags, grounded = _tag_scan(study, excluded)
        sets, unit_roles = _coded_sets(study, excluded, confirmed)
        coded_turns = len(sets.sizes)
        masi_alpha = agreement.masi_alpha_np(sets)
        kappas = agreement.pairwise_kappa_np(sets)
        similarity = agreement.coder_similarity_np(sets)
        label_figures = _label_figures_np(labels, label_counts, sets, unit_roles)
        vote_alpha = agreement.nominal_alpha_np(vote_units)
    agreement_by_rater = _Agreement(votes=agreement.majority_agreement(vote_units), tags=similarity)
    raters = _raters(study, rater_tags, excluded, agreement_by_rater, members)
    names = {rater_id: figures.username for rater_id, figures in raters.items()}
    model_rates, baseline = _grounding_rates(study, excluded, grounded)
    return StudyDashboard(
        study=study,
        conversations=sum(r.conversations for r in raters.values()),
        coded_turns=coded_turns,
        masi_alpha=masi_alpha,
        labels=label_figures,
        pairs=[
            PairFigures(rater_a=names[p.coder_a], rater_b=names[p.coder_b], kappa=p.kappa, turns=p.n) for p in kappas
        ],
        votes=_vote_figures(vote_units, vote_alpha),
        raters=sorted(raters.values(), key=lambda r: r.username),
        model_rates=model_rates,
        user_baseline=baseline,
        excluded_raters=len(excluded_all),
        include_excluded=include_excluded,
    )


# --- snapshots: the figures as JSON ----------------------------------------------------------------

SNAPSHOT_VERSION = 1  # a snapshot of another version is not read (the page computes or waits for a new one)


def dashboard_to_json(figures: StudyDashboard) -> dict[str, Any]:
    """The figures as JSON-ready data (labels by id, the study left out): `dashboard_from_json` reads it back."""
    data: dict[str, Any] = {
        f.name: getattr(figures, f.name) for f in fields(figures) if f.name not in ("study", "labels", "pairs")
    }
    data |= {
        "version": SNAPSHOT_VERSION,
        "labels": [
            {f.name: getattr(row, f.name) for f in fields(row) if f.name != "label"} | {"label_id": row.label.pk}
            for row in figures.labels
        ],
        "pairs": [asdict(pair) for pair in figures.pairs],
        "votes": asdict(figures.votes),
        "raters": [asdict(rater) for rater in figures.raters],
        "model_rates": [asdict(rate) for rate in figures.model_rates],
        "user_baseline": asdict(figures.user_baseline),
    }
    return data


def dashboard_from_json(data: dict[str, Any], study: Study) -> StudyDashboard | None:
    """The figures `dashboard_to_json` wrote, equal to the computation they came from (one query: the labels);
    None for a snapshot of another version. A label deleted since is left out."""
    if data.get("version") != SNAPSHOT_VERSION:
        return None
    rows = data["labels"]
    labels = Label.objects.select_related("taxonomy").in_bulk([row["label_id"] for row in rows])
    return StudyDashboard(
        study=study,
        conversations=data["conversations"],
        coded_turns=data["coded_turns"],
        masi_alpha=data["masi_alpha"],
        labels=[
            LabelFigures(label=labels[row["label_id"]], **{k: v for k, v in row.items() if k != "label_id"})
            for row in rows
            if row["label_id"] in labels
        ],
        pairs=[PairFigures(**pair) for pair in data["pairs"]],
        votes=VoteFigures(**data["votes"]),
        raters=[RaterFigures(**rater) for rater in data["raters"]],
        model_rates=[GroundingRate(**rate) for rate in data["model_rates"]],
        user_baseline=GroundingRate(**data["user_baseline"]),
        excluded_raters=data["excluded_raters"],
        include_excluded=data["include_excluded"],
    )


def dashboard_snapshot(study: Study, include_excluded: bool) -> DashboardSnapshot | None:
    """The study's stored snapshot row (with or without figures yet), one query."""
    return DashboardSnapshot.objects.filter(study=study, include_excluded=include_excluded).first()


def _without(qs: QuerySet[_M], excluded: set[int], *paths: str) -> QuerySet[_M]:
    """`qs` without the rows whose user at each of `paths` (e.g. "rater_id") is an excluded rater."""
    for path in paths if excluded else ():
        qs = qs.exclude(**{f"{path}__in": excluded})
    return qs


def _tags(study: Study, excluded: set[int]) -> QuerySet[Tag]:
    """The study's tags that count: not on a planted attention check, not by or on the work of an excluded rater,
    not put in a review that expired."""
    abandoned = ReviewAssignment.objects.filter(
        conversation_id=OuterRef("turn__conversation_id"),
        rater_id=OuterRef("rater_id"),
        status=ReviewAssignment.Status.EXPIRED,
    )
    tags = Tag.objects.filter(turn__conversation__study=study, turn__is_attention_check=False).exclude(
        Q(task=Tag.Task.REVIEW) & Exists(abandoned)
    )
    return _without(tags, excluded, "rater_id", "turn__conversation__rater_id")


COVERING = REVIEWS_HOLDING_A_PLACE  # review assignments that code turns (an expired one codes nothing)


def _coded_turns(study: Study, excluded: set[int]) -> tuple[dict[int, dict[int, set[int]]], dict[int, str]]:
    """{turn: {rater: label ids}} for every coded turn (see the module notes), and each turn's role."""
    coded: dict[int, dict[int, set[int]]] = defaultdict(dict)
    roles: dict[int, str] = {}
    reply = Q(role=Turn.Role.ASSISTANT, status=Turn.Status.DONE, is_attention_check=False)
    if not study.review_all_branches:
        lived = Comparison.objects.filter(conversation__study=study, task=Comparison.Task.LIVE)
        reply &= Q(pk__in=lived.values("continued_from_id"))
    covered = (
        _without(Turn.objects.filter(conversation__study=study, conversation__reviews__status__in=COVERING), excluded,
                 "conversation__rater_id")
        .filter(Q(role=Turn.Role.USER) | reply)
        .order_by()
        .values_list("pk", "role", "conversation__reviews__rater_id")
    )  # fmt: skip
    for turn_id, role, rater_id in covered:
        if rater_id in excluded:
            continue
        coded[turn_id].setdefault(rater_id, set())
        roles[turn_id] = role
    tags = (
        _tags(study, excluded)
        .filter(CONFIRMED)
        .order_by()  # no sort: the rows go into sets
        .values_list("turn_id", "turn__role", "rater_id", "label_id")
    )
    for turn_id, role, rater_id, label_id in tags:
        coded[turn_id].setdefault(rater_id, set()).add(label_id)
        roles[turn_id] = role
    return coded, roles


def _int_rows(qs: QuerySet[Any, Any], width: int) -> np.ndarray:
    """A values_list of integers as an (n, width) array, read through the cursor: no row objects, no converters
    (hundreds of thousands of rows in a fraction of the time the queryset's iteration takes)."""
    sql, params = qs.query.get_compiler(using=qs.db).as_sql()
    with connections[qs.db].cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    return np.array(rows, dtype=np.int64).reshape(len(rows), width)


def _flag(condition: Q) -> Case:
    return Case(When(condition, then=Value(1)), default=Value(0), output_field=IntegerField())


# Bits of a tag's `flags` in `_tag_scan`: what the figures ask of it, computed by PostgreSQL.
_CONFIRMED, _LIVE, _SUGGESTION, _REJECTED, _PENDING, _GROUNDING, _USER_TURN = (1 << k for k in range(7))


def _tag_scan(study: Study, excluded: set[int]) -> tuple[np.ndarray, dict[int, Counter[str]], Counter[int], set[int]]:
    """One scan of the tags that count (`_tags`) for every figure that reads them: the confirmed tags as rows
    (turn, 1 on a user turn, rater, label), `_tag_counts`' counts by label and by rater, and the turns with a
    confirmed grounding-act tag (for `_grounding_rates`)."""
    flags = (
        _flag(CONFIRMED) * _CONFIRMED
        + _flag(Q(task=Tag.Task.LIVE)) * _LIVE
        + _flag(SUGGESTION) * _SUGGESTION
        + _flag(Q(status=Tag.Status.REJECTED)) * _REJECTED
        + _flag(Q(status=Tag.Status.SUGGESTED)) * _PENDING
        + _flag(Q(label__kind=Label.Kind.GROUNDING)) * _GROUNDING
        + _flag(Q(turn__role=Turn.Role.USER)) * _USER_TURN
    )
    rows = _int_rows(
        _tags(study, excluded).order_by().annotate(flags=flags).values_list("turn_id", "rater_id", "label_id", "flags"),
        4,
    )
    turn, rater, label, flag = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]

    def has(bit: int) -> np.ndarray:
        return (flag & bit) != 0

    confirmed, suggestion = has(_CONFIRMED), has(_SUGGESTION)
    by_label: dict[int, Counter[str]] = defaultdict(Counter)
    label_ids, label_of = np.unique(label, return_inverse=True)
    columns = {
        "confirmed": confirmed,
        "live": confirmed & has(_LIVE),
        "review": confirmed & ~has(_LIVE),
        "accepted": suggestion & confirmed,
        "rejected": suggestion & has(_REJECTED),
        "pending": suggestion & has(_PENDING),
    }
    for name, selected in columns.items():
        totals = np.bincount(label_of.ravel(), weights=selected, minlength=len(label_ids))
        for label_id, total in zip(label_ids.tolist(), totals.tolist(), strict=True):
            by_label[label_id][name] += int(total)
    rater_ids, rater_of = np.unique(rater, return_inverse=True)
    per_rater = np.bincount(rater_of.ravel(), weights=confirmed, minlength=len(rater_ids))
    by_rater = Counter({r: int(n) for r, n in zip(rater_ids.tolist(), per_rater.tolist(), strict=True)})
    grounded = set(np.unique(turn[confirmed & has(_GROUNDING)]).tolist())
    kept = rows[confirmed]
    is_user = (kept[:, 3] & _USER_TURN != 0).astype(np.int64)
    return np.column_stack((kept[:, 0], is_user, kept[:, 1], kept[:, 2])), by_label, by_rater, grounded


def _coded_sets(study: Study, excluded: set[int], tags: np.ndarray) -> tuple[agreement.CodedSets, list[str]]:
    """`_coded_turns` as arrays, for the turns coded by two raters or more (`agreement.CodedSets`, units in turn
    order; each rater's label set a bit-set, OR-reduced in NumPy), and their roles. `tags`: the confirmed tags
    from `_tag_scan`."""
    reply = Q(role=Turn.Role.ASSISTANT, status=Turn.Status.DONE, is_attention_check=False)
    if not study.review_all_branches:
        lived = Comparison.objects.filter(conversation__study=study, task=Comparison.Task.LIVE)
        reply &= Q(pk__in=lived.values("continued_from_id"))
    covered = _int_rows(
        _without(Turn.objects.filter(conversation__study=study, conversation__reviews__status__in=COVERING), excluded,
                 "conversation__rater_id")
        .filter(Q(role=Turn.Role.USER) | reply)
        .order_by()
        .annotate(is_user=_flag(Q(role=Turn.Role.USER)))
        .values_list("pk", "is_user", "conversation__reviews__rater_id"),
        3,
    )  # fmt: skip
    if excluded:
        covered = covered[~np.isin(covered[:, 2], list(excluded))]
    # One entry per (turn, rater, label); a covering rater's entry has no label (-1): "no label" unless tagged.
    turn = np.concatenate((covered[:, 0], tags[:, 0]))
    is_user = np.concatenate((covered[:, 1], tags[:, 1]))
    rater = np.concatenate((covered[:, 2], tags[:, 2]))
    label = np.concatenate((np.full(len(covered), -1, dtype=np.int64), tags[:, 3]))
    label_ids, position = np.unique(tags[:, 3], return_inverse=True)
    words = max(1, -(-len(label_ids) // 64))
    bits = np.zeros((len(turn), words), dtype=np.uint64)
    tagged = np.flatnonzero(label >= 0)
    position = position.ravel()
    bits[tagged, position // 64] = np.left_shift(np.uint64(1), (position % 64).astype(np.uint64))
    # Each (turn, rater) once, its bits OR-ed together; sorted by turn, so a turn's coders are adjacent.
    rater_ids, rater_index = np.unique(rater, return_inverse=True)
    key = turn * max(len(rater_ids), 1) + rater_index.ravel()
    order = np.argsort(key, kind="stable")
    key = key[order]
    firsts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1]))) if len(key) else key
    pair_bits = np.bitwise_or.reduceat(bits[order], firsts, axis=0) if len(key) else bits
    pair_turn, pair_rater = key[firsts] // max(len(rater_ids), 1), rater_ids[key[firsts] % max(len(rater_ids), 1)]
    pair_user = is_user[order][firsts]
    # Units: the turns with two coders or more.
    turn_firsts = np.flatnonzero(np.concatenate(([True], pair_turn[1:] != pair_turn[:-1]))) if len(firsts) else firsts
    turn_sizes = np.diff(np.concatenate((turn_firsts, [len(pair_turn)])))
    keep = np.repeat(turn_sizes >= 2, turn_sizes)
    sizes = turn_sizes[turn_sizes >= 2].astype(np.int64)
    starts = np.cumsum(sizes) - sizes
    pair_bits, pair_rater, pair_user = pair_bits[keep], pair_rater[keep], pair_user[keep]
    distinct, value = np.unique(pair_bits, axis=0, return_inverse=True)
    coders, coder = np.unique(pair_rater, return_inverse=True)
    shifts = np.arange(64, dtype=np.uint64)
    members = ((distinct[:, :, None] >> shifts) & np.uint64(1)).reshape(len(distinct), words * 64).astype(bool)
    sets = [frozenset(label_ids[np.flatnonzero(row)].tolist()) for row in members]
    coded = agreement.CodedSets(
        unit=np.repeat(np.arange(len(sizes), dtype=np.int64), sizes),
        coder=coder.ravel().astype(np.int64),
        value=value.ravel().astype(np.int64),
        bits=distinct.reshape(len(distinct), words),
        coders=coders.tolist(),
        sets=sets,
        starts=starts,
        sizes=sizes,
    )
    roles: list[str] = [Turn.Role.USER if flag else Turn.Role.ASSISTANT for flag in pair_user[starts].tolist()]
    return coded, roles


def _tag_counts(study: Study, excluded: set[int]) -> tuple[dict[int, Counter[str]], Counter[int]]:
    """Tag counts by label (confirmed, live, review, suggestions by outcome) and confirmed tags by rater."""
    rows = (
        _tags(study, excluded)
        .values("label_id", "rater_id")
        .annotate(
            confirmed=Count("pk", filter=CONFIRMED),
            live=Count("pk", filter=CONFIRMED & Q(task=Tag.Task.LIVE)),
            review=Count("pk", filter=CONFIRMED & Q(task=Tag.Task.REVIEW)),
            accepted=Count("pk", filter=SUGGESTION & CONFIRMED),
            rejected=Count("pk", filter=SUGGESTION & Q(status=Tag.Status.REJECTED)),
            pending=Count("pk", filter=SUGGESTION & Q(status=Tag.Status.SUGGESTED)),
        )
        .order_by()
    )
    by_label: dict[int, Counter[str]] = defaultdict(Counter)
    by_rater: Counter[int] = Counter()
    for row in rows:
        counts = {name: value for name, value in row.items() if name not in ("label_id", "rater_id")}
        by_label[row["label_id"]].update(counts)
        by_rater[row["rater_id"]] += row["confirmed"]
    return by_label, by_rater


def _label_figures(
    labels: list[Label],
    counts: dict[int, Counter[str]],
    overlap: dict[int, dict[int, set[int]]],
    roles: dict[int, str],
) -> list[LabelFigures]:
    # Binary data has few patterns: count (coders, coders using the label) per label, not units.
    with_label: dict[int, Counter[tuple[int, int]]] = defaultdict(Counter)
    units_by_role: dict[str, Counter[int]] = defaultdict(Counter)
    for turn_id, coders in overlap.items():
        m = len(coders)
        units_by_role[roles[turn_id]][m] += 1
        used: dict[int, int] = {}
        for labels_used in coders.values():
            for label_id in labels_used:
                used[label_id] = used.get(label_id, 0) + 1
        for label_id, ones in used.items():
            with_label[label_id][m, ones] += 1
    figures = []
    for label in labels:
        units: Counter[int] = Counter()
        for role, by_size in units_by_role.items():
            if label.applies_to(role):
                units.update(by_size)
        patterns: Counter[tuple[int, ...]] = Counter()
        for (m, ones), n in with_label[label.pk].items():
            patterns[(1,) * ones + (0,) * (m - ones)] += n
            units[m] -= n  # the rest of the turns with m coders: nobody used the label
        for m, n in units.items():
            patterns[(0,) * m] += n
        figures.append(
            _label_row(
                label,
                counts.get(label.pk, Counter()),
                alpha=agreement.alpha_from_patterns(patterns),
                turns=sum(patterns.values()),
                positive=sum(with_label[label.pk].values()),
            )
        )
    return figures


def _label_row(label: Label, row: Counter[str], *, alpha: float | None, turns: int, positive: int) -> LabelFigures:
    """One label's figures: its tag counts (`row`) and its agreement."""
    return LabelFigures(
        label=label,
        confirmed=row["confirmed"],
        live=row["live"],
        review=row["review"],
        alpha=alpha,
        alpha_turns=turns,
        alpha_positive=positive,
        accepted=row["accepted"],
        rejected=row["rejected"],
        pending=row["pending"],
    )


def _label_figures_np(
    labels: list[Label], counts: dict[int, Counter[str]], sets: agreement.CodedSets, roles: list[str]
) -> list[LabelFigures]:
    """`_label_figures` over the encoded label sets (`roles[u]`: the role of unit u), every label at once."""
    position = {label.pk: k for k, label in enumerate(labels)}
    in_set = [[position[label_id] for label_id in labels_used if label_id in position] for labels_used in sets.sets]
    lengths = np.array([len(found) for found in in_set], dtype=np.int64)
    flat = np.array([k for found in in_set for k in found], dtype=np.int64)
    # Each row (unit, coder) expanded to one entry per label in its set.
    per_row = lengths[sets.value] if len(lengths) else np.zeros(0, dtype=np.int64)
    offsets = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    firsts = np.repeat(offsets[sets.value] if len(lengths) else per_row, per_row)
    within = np.arange(per_row.sum()) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    role_names: list[str] = [Turn.Role.USER, Turn.Role.ASSISTANT]
    group_of = {role: g for g, role in enumerate(role_names)}
    alphas = agreement.binary_alphas_np(
        sizes=sets.sizes,
        groups=np.array([group_of[role] for role in roles], dtype=np.int64),
        applies=np.array([[label.applies_to(role) for label in labels] for role in role_names], dtype=bool).reshape(
            len(role_names), len(labels)
        ),
        used_unit=np.repeat(sets.unit, per_row),
        used_label=flat[firsts + within] if len(flat) else np.zeros(0, dtype=np.int64),
    )
    return [
        _label_row(
            label, counts.get(label.pk, Counter()), alpha=found.alpha, turns=found.units, positive=found.positive
        )
        for label, found in zip(labels, alphas, strict=True)
    ]


def _comparisons(study: Study, excluded: set[int]) -> QuerySet[Comparison]:
    """The study's votes that count: not by or on the work of an excluded rater."""
    comparisons = Comparison.objects.filter(conversation__study=study)
    return _without(comparisons, excluded, "rater_id", "conversation__rater_id")


def _vote_units(study: Study, excluded: set[int]) -> dict[int, dict[int, str]]:
    """{user turn: {rater: slot letter, "tie" or "all_bad"}} over the user turns voted by two raters or more
    (`agreement.vote_units`, the definition the dataset card shares); votes that failed an attention check are
    left out (they judged a planted nonsense reply)."""
    comparisons = _comparisons(study, excluded).exclude(attention_passed=False).order_by()
    shared = comparisons.values("parent_id").annotate(raters=Count("rater_id", distinct=True)).filter(raters__gte=2)
    rows = (
        comparisons.filter(parent_id__in=shared.values("parent_id"))
        .order_by("parent_id", "id")
        .values_list("parent_id", "rater_id", "choice", "chosen__position")
    )
    return agreement.vote_units(
        (parent_id, rater_id, agreement.vote_code(choice, position)) for parent_id, rater_id, choice, position in rows
    )


def _vote_figures(units: dict[int, dict[int, str]], alpha: float | None) -> VoteFigures:
    unanimous = sum(len(set(votes.values())) == 1 for votes in units.values())
    return VoteFigures(comparisons=len(units), alpha=alpha, unanimous=unanimous)


@dataclass(frozen=True)
class _Agreement:
    votes: dict[int, tuple[int, int]]  # rater → (votes agreeing with the others' majority, votes compared)
    tags: dict[int, tuple[float, int]]  # rater → (mean MASI similarity, turns shared)


@dataclass(frozen=True)
class _Member:
    """A rater's Participant row in the study, as the dashboard reads it."""

    excluded: bool
    flagged: bool
    qualification_score: float | None


def _members(study: Study) -> dict[int, _Member]:
    """The study's participants by user id (one query): who is excluded, flagged, and how they qualified."""
    rows = Participant.objects.filter(study=study).values_list("user_id", "excluded", "flagged", "qualification_score")
    return {user_id: _Member(excluded, flagged, score) for user_id, excluded, flagged, score in rows}


def _excluded(members: dict[int, _Member]) -> set[int]:
    return {user_id for user_id, member in members.items() if member.excluded}


def _names_and_gold(study: Study, ids: set[int], excluded: set[int]) -> dict[int, tuple[str, int, int]]:
    """{rater: (username, gold answers passed, gold answers)} for these raters and every rater who answered a
    gold item of the study (one query: the answers are counted in subqueries)."""
    answers = GoldAnswer.objects.filter(item__study=study, rater_id=OuterRef("pk")).order_by().values("rater_id")

    def counted(qs: QuerySet[GoldAnswer, Any]) -> Coalesce:
        return Coalesce(Subquery(qs.annotate(n=Count("pk")).values("n"), output_field=IntegerField()), 0)

    gold_raters = GoldAnswer.objects.filter(item__study=study).values("rater_id")
    users = _without(get_user_model().objects.filter(Q(pk__in=ids) | Q(pk__in=gold_raters)), excluded, "pk")
    rows = users.annotate(gold_n=counted(answers), gold_ok=counted(answers.filter(passed=True))).values_list(
        "pk", "username", "gold_n", "gold_ok"
    )
    return {pk: (username, ok, n) for pk, username, n, ok in rows}


def _raters(
    study: Study,
    tags: Counter[int],
    excluded: set[int],
    agreed: _Agreement | None = None,
    members: dict[int, _Member] | None = None,
) -> dict[int, RaterFigures]:
    agreed = agreed or _Agreement(votes={}, tags={})
    members = members or {}
    conversations = dict(
        _without(Conversation.objects.filter(study=study), excluded, "rater_id")
        .values("rater_id")
        .annotate(n=Count("pk"))
        .values_list("rater_id", "n")
    )
    reviews = dict(
        _without(ReviewAssignment.objects.filter(conversation__study=study), excluded, "rater_id",
                 "conversation__rater_id")
        .values("rater_id")
        .annotate(n=Count("pk"))
        .values_list("rater_id", "n")
    )  # fmt: skip
    # One row per vote (small values): the median is portable this way (SQLite has no percentile).
    votes: dict[int, list[int | None]] = defaultdict(list)
    checks: dict[int, list[bool]] = defaultdict(list)  # live attention checks: passed or not
    rows = _comparisons(study, excluded).order_by().values_list("rater_id", "decision_ms", "attention_passed")
    for rater_id, ms, attention_passed in rows:
        votes[rater_id].append(ms)
        if attention_passed is not None:
            checks[rater_id].append(attention_passed)
    ids = set(conversations) | {rater_id for rater_id, n in tags.items() if n} | set(reviews) | set(votes)
    people = _names_and_gold(study, ids, excluded)
    figures = {}
    for rater_id, (username, gold_ok, gold_n) in people.items():
        timed = [ms for ms in votes[rater_id] if ms is not None]
        member = members.get(rater_id)
        vote_agreeing, vote_compared = agreed.votes.get(rater_id, (0, 0))
        tag_similarity, tag_turns = agreed.tags.get(rater_id, (None, 0))
        figures[rater_id] = RaterFigures(
            username=username,
            conversations=conversations.get(rater_id, 0),
            votes=len(votes[rater_id]),
            tags=tags.get(rater_id, 0),
            reviews=reviews.get(rater_id, 0),
            median_decision_ms=statistics.median(timed) if timed else None,
            gold_passed=gold_ok + sum(checks[rater_id]),
            gold_total=gold_n + len(checks[rater_id]),
            votes_agreeing=vote_agreeing,
            votes_compared=vote_compared,
            tag_agreement=tag_similarity,
            tag_turns=tag_turns,
            qualification_score=member.qualification_score if member else None,
            flagged=member.flagged if member else False,
            excluded=member.excluded if member else False,
        )
    return figures


def rater_figures(*, study: Study, rater_id: int) -> RaterFigures | None:
    """One rater's row of the dashboard (their work counted even if they are excluded), for the
    Participant admin; None when they have done nothing in the study yet."""
    members = _members(study)
    excluded = _excluded(members) - {rater_id}
    coded, _ = _coded_turns(study, excluded)
    _, tags = _tag_counts(study, excluded)
    agreed = _Agreement(
        votes=agreement.majority_agreement(_vote_units(study, excluded)),
        tags=agreement.coder_similarity_np(agreement.encode_sets(coded)),
    )
    return _raters(study, tags, excluded, agreed, members).get(rater_id)


def _grounding_rates(
    study: Study, excluded: set[int], grounded: set[int] | None = None
) -> tuple[list[GroundingRate], GroundingRate]:
    # Two flat scans counted here: PostgreSQL ran COUNT(...) FILTER (WHERE id IN (subquery)) as
    # 3.5 s on a 2,000-conversation study; the grounded turn ids fit in a set (`_coded_sets` passes them in
    # from its own scan of the tags).
    if grounded is None:
        grounded = set(
            _tags(study, excluded)
            .filter(CONFIRMED, label__kind=Label.Kind.GROUNDING)
            .order_by()
            .values_list("turn_id", flat=True)
        )
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    turns = (
        _without(
            Turn.objects.filter(conversation__study=study, status=Turn.Status.DONE, is_rewrite=False),
            excluded,
            "conversation__rater_id",
        )
        .filter(is_attention_check=False)  # planted: never a model's reply
        .order_by()
        .values_list("pk", "role", "model_config__name")
    )
    for pk, role, model_name in turns:
        key = (role, "" if role == Turn.Role.USER else (model_name or "—"))
        counts[key][0] += 1
        counts[key][1] += pk in grounded
    models: list[GroundingRate] = []
    baseline = GroundingRate(name="Users (human baseline)", turns=0, grounded=0)
    for (role, name), (n, hits) in sorted(counts.items(), key=lambda item: item[0][1]):
        if role == Turn.Role.USER:
            baseline = GroundingRate(name=baseline.name, turns=n, grounded=hits)
        else:
            models.append(GroundingRate(name=name, turns=n, grounded=hits))
    return models, baseline
