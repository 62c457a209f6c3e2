"""Reads for a study's dashboard: agreement between raters, activity, suggestions, grounding rates.

A handful of aggregated queries, whatever the size of the study; the agreement figures are then
computed in Python over compact per-turn data (labeling.agreement).

Who coded a turn. A rater *coded* a turn when they have a confirmed tag on it (live or review
task, merged) or hold a review assignment (open or done) for its conversation that covers the
turn: the lived path (user turns and the replies the conversation continued from), or every
finished reply when the study reviews all branches. A covering rater with no tag on the turn
coded it as "no label". A live rater counts only on the turns they tagged: they were not asked
to tag every reply. An open assignment counts from the start, so a review in progress lowers
agreement until it is done; the review pass is the point of overlap, so we accept that.

Choices, each as simple as the data allows:

* per-label alpha: binary present/absent per turn and coder, over turns with ≥ 2 coders and a
  role the label applies to (a user-only label is not "absent" from a reply);
* overall alpha: each coder's label set per turn, MASI distance;
* pairwise Cohen's kappa: each distinct label set is a category (strict: {a} against {a, b}
  is a plain disagreement; MASI alpha is the lenient figure);
* vote agreement: votes grouped by their user turn, the live rater's and the reviewers' (who give
  their own preference at each branch point), over user turns with ≥ 2 votes; nominal alpha on
  value = the chosen reply's id, "tie" or "all_bad", and the number of unanimous turns. Strength is
  left out: "B, slight" and "B, clear" agree;
* grounding rate: finished model replies (chosen or not, rewrites excluded) with at least one
  confirmed grounding-kind tag from anyone, per 100 replies, by model config; the human
  baseline is the same rate over the raters' own user turns. Untagged turns count as "no act",
  for replies and user turns alike.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db.models import Count, Q

from annotate.models import Comparison, Conversation, Study, Turn
from labeling import agreement
from labeling.models import Label, ReviewAssignment, Tag
from labeling.selectors import labels_for

CONFIRMED = Q(status=Tag.Status.CONFIRMED)
SUGGESTION = Q(source=Tag.Source.SUGGESTION)


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

    @property
    def median_decision_s(self) -> float | None:
        return self.median_decision_ms / 1000 if self.median_decision_ms is not None else None


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


def study_dashboard(*, study: Study) -> StudyDashboard:
    """Every figure of the dashboard page, in a dozen queries whatever the size of the study."""
    labels = labels_for(study)
    coded, roles = _coded_turns(study)
    overlap = {turn_id: coders for turn_id, coders in coded.items() if len(coders) >= 2}
    set_units = {turn_id: {r: frozenset(s) for r, s in coders.items()} for turn_id, coders in overlap.items()}
    label_counts, rater_tags = _tag_counts(study)
    raters = _raters(study, rater_tags)
    names = {rater_id: figures.username for rater_id, figures in raters.items()}
    model_rates, baseline = _grounding_rates(study)
    return StudyDashboard(
        study=study,
        conversations=sum(r.conversations for r in raters.values()),
        coded_turns=len(overlap),
        masi_alpha=agreement.krippendorff_alpha(set_units, agreement.masi_distance),
        labels=_label_figures(labels, label_counts, overlap, roles),
        pairs=[
            PairFigures(rater_a=names[p.coder_a], rater_b=names[p.coder_b], kappa=p.kappa, turns=p.n)
            for p in agreement.pairwise_kappa(set_units)
        ],
        votes=_vote_figures(study),
        raters=sorted(raters.values(), key=lambda r: r.username),
        model_rates=model_rates,
        user_baseline=baseline,
    )


def _coded_turns(study: Study) -> tuple[dict[int, dict[int, set[int]]], dict[int, str]]:
    """{turn: {rater: label ids}} for every coded turn (see the module notes), and each turn's role."""
    coded: dict[int, dict[int, set[int]]] = defaultdict(dict)
    roles: dict[int, str] = {}
    reply = Q(role=Turn.Role.ASSISTANT, status=Turn.Status.DONE)
    if not study.review_all_branches:
        lived = Comparison.objects.filter(conversation__study=study, task=Comparison.Task.LIVE)
        reply &= Q(pk__in=lived.values("continued_from_id"))
    covered = (
        Turn.objects.filter(conversation__study=study, conversation__reviews__isnull=False)
        .filter(Q(role=Turn.Role.USER) | reply)
        .order_by()
        .values_list("pk", "role", "conversation__reviews__rater_id")
    )
    for turn_id, role, rater_id in covered:
        coded[turn_id].setdefault(rater_id, set())
        roles[turn_id] = role
    tags = (
        Tag.objects.filter(CONFIRMED, turn__conversation__study=study)
        .order_by()  # no sort: the rows go into sets
        .values_list("turn_id", "turn__role", "rater_id", "label_id")
    )
    for turn_id, role, rater_id, label_id in tags:
        coded[turn_id].setdefault(rater_id, set()).add(label_id)
        roles[turn_id] = role
    return coded, roles


def _tag_counts(study: Study) -> tuple[dict[int, Counter[str]], Counter[int]]:
    """Tag counts by label (confirmed, live, review, suggestions by outcome) and confirmed tags by rater."""
    rows = (
        Tag.objects.filter(turn__conversation__study=study)
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
        row = counts.get(label.pk, Counter())
        figures.append(
            LabelFigures(
                label=label,
                confirmed=row["confirmed"],
                live=row["live"],
                review=row["review"],
                alpha=agreement.alpha_from_patterns(patterns),
                alpha_turns=sum(patterns.values()),
                alpha_positive=sum(with_label[label.pk].values()),
                accepted=row["accepted"],
                rejected=row["rejected"],
                pending=row["pending"],
            )
        )
    return figures


def _vote_figures(study: Study) -> VoteFigures:
    comparisons = Comparison.objects.filter(conversation__study=study).order_by()
    shared = comparisons.values("parent_id").annotate(raters=Count("rater_id", distinct=True)).filter(raters__gte=2)
    units: dict[int, dict[int, int | str]] = defaultdict(dict)
    rows = comparisons.filter(parent_id__in=shared.values("parent_id")).values_list(
        "parent_id", "rater_id", "choice", "chosen_id"
    )
    for parent_id, rater_id, choice, chosen_id in rows:
        units[parent_id][rater_id] = chosen_id if chosen_id is not None else choice
    unanimous = sum(len(set(votes.values())) == 1 for votes in units.values())
    return VoteFigures(comparisons=len(units), alpha=agreement.krippendorff_alpha(units), unanimous=unanimous)


def _raters(study: Study, tags: Counter[int]) -> dict[int, RaterFigures]:
    conversations = dict(
        Conversation.objects.filter(study=study).values("rater_id").annotate(n=Count("pk")).values_list("rater_id", "n")
    )
    reviews = dict(
        ReviewAssignment.objects.filter(conversation__study=study)
        .values("rater_id")
        .annotate(n=Count("pk"))
        .values_list("rater_id", "n")
    )
    # One row per vote (two integers): the median is portable this way (SQLite has no percentile).
    votes: dict[int, list[int | None]] = defaultdict(list)
    for rater_id, ms in (
        Comparison.objects.filter(conversation__study=study).order_by().values_list("rater_id", "decision_ms")
    ):
        votes[rater_id].append(ms)
    ids = set(conversations) | {rater_id for rater_id, n in tags.items() if n} | set(reviews) | set(votes)
    names = dict(get_user_model().objects.filter(pk__in=ids).values_list("pk", "username"))
    figures = {}
    for rater_id in ids:
        timed = [ms for ms in votes[rater_id] if ms is not None]
        figures[rater_id] = RaterFigures(
            username=names.get(rater_id, f"#{rater_id}"),
            conversations=conversations.get(rater_id, 0),
            votes=len(votes[rater_id]),
            tags=tags.get(rater_id, 0),
            reviews=reviews.get(rater_id, 0),
            median_decision_ms=statistics.median(timed) if timed else None,
        )
    return figures


def _grounding_rates(study: Study) -> tuple[list[GroundingRate], GroundingRate]:
    # Two flat scans counted here: PostgreSQL ran COUNT(...) FILTER (WHERE id IN (subquery)) as
    # 3.5 s on a 2,000-conversation study; the grounded turn ids fit in a set.
    grounded = set(
        Tag.objects.filter(CONFIRMED, turn__conversation__study=study, label__kind=Label.Kind.GROUNDING)
        .order_by()
        .values_list("turn_id", flat=True)
    )
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    turns = (
        Turn.objects.filter(conversation__study=study, status=Turn.Status.DONE, is_rewrite=False)
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
