"""Reads for tagging: the labels a study uses, the tags a rater put on turns, the review pass."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.contrib.auth.models import User
from django.core.cache import cache
from django.db.models import Count, Q, QuerySet

from annotate import tree
from annotate.models import Comparison, Conversation, Participant, Study, Turn
from annotate.selectors import excluded_raters, lived_path, requeued_raters
from labeling.models import GoldAnswer, GoldItem, Label, ReviewAssignment, Tag, Taxonomy

DEFAULT_TAXONOMY_SLUG = "default"


def taxonomy_labels(study: Study) -> QuerySet[Label]:
    """The labels of the study's taxonomy, or of the shipped default (created by a migration; none if it was
    deleted), as a query: the taxonomy itself is not read."""
    if study.taxonomy_id is not None:
        return Label.objects.filter(taxonomy_id=study.taxonomy_id)
    return Label.objects.filter(taxonomy__slug=DEFAULT_TAXONOMY_SLUG)


# Every session and review answer shows the labels: they are kept in Django's cache, per taxonomy, for this
# long, and forgotten when a label or taxonomy is saved or deleted (`labels_forget`, connected in apps.py).
# With a per-process cache (locmem) another web process may show an admin's edit up to this late.
LABELS_CACHE_SECONDS = 60
# On top of a shared cache (Redis) each process keeps the labels it read for this long: a session answer then
# costs no cache round trip and no unpickling. Another process shows an admin's edit at most this late.
LABELS_LOCAL_SECONDS = 5.0
_labels_local: dict[str, tuple[float, list[Label]]] = {}


def _labels_key(taxonomy_id: int | None) -> str:
    return f"labels:{taxonomy_id if taxonomy_id is not None else DEFAULT_TAXONOMY_SLUG}"


def labels_for(study: Study, *, fresh: bool = False) -> list[Label]:
    """The labels of the study's taxonomy (`taxonomy_labels`): one query, then from the cache; `fresh` reads the
    database (writes check against it: a label deleted a moment ago must not be stored)."""
    key = _labels_key(study.taxonomy_id)
    now = time.monotonic()
    kept = None if fresh else _labels_local.get(key)
    if kept is not None and kept[0] > now:
        return kept[1]
    labels: list[Label] | None = None if fresh else cache.get(key)
    if labels is None:
        labels = list(taxonomy_labels(study).select_related("taxonomy").order_by("order", "name"))
        cache.set(key, labels, LABELS_CACHE_SECONDS)
    _labels_local[key] = (now + LABELS_LOCAL_SECONDS, labels)
    return labels


def labels_forget(*, instance: Label | Taxonomy, **_: object) -> None:
    """Forget the cached labels of the taxonomy a label or taxonomy belongs to (and the default's)."""
    taxonomy_id = instance.taxonomy_id if isinstance(instance, Label) else instance.pk
    keys = [_labels_key(taxonomy_id), _labels_key(None)]
    cache.delete_many(keys)
    for key in keys:
        _labels_local.pop(key, None)


def labels_forget_all() -> None:
    """Forget every process-local copy (tests roll back the labels they read)."""
    _labels_local.clear()


def tags_by_turn(*, turn_ids: Iterable[int], rater_id: int, task: str) -> dict[int, list[Tag]]:
    """The rater's tags (confirmed and pending suggestions) on these turns, by turn id."""
    found: dict[int, list[Tag]] = defaultdict(list)
    tags = (
        Tag.objects.filter(turn_id__in=list(turn_ids), rater_id=rater_id, task=task)
        .exclude(status=Tag.Status.REJECTED)
        .select_related("label")
    )
    for tag in tags:
        found[tag.turn_id].append(tag)
    return found


# --- review pass ---------------------------------------------------------------------------


# Reviews holding a place towards `study.review_overlap`: open and done ones (an expired one gave it back).
REVIEWS_HOLDING_A_PLACE = (ReviewAssignment.Status.OPEN, ReviewAssignment.Status.DONE)


def reviewable_conversations(*, study: Study, rater: User) -> QuerySet[Conversation]:
    """Finished conversations of the study this rater may still claim: not their own, never reviewed
    by them (an expired review of theirs included), not by an excluded rater, and with fewer than
    `study.review_overlap` open or done reviews (expired ones, and those by raters excluded with their work
    re-queued, do not count). Least reviewed first, then the longest finished, so a claim spreads reviews
    evenly. Only meaningful under the study's lock (`services.review_claim`)."""
    counted = Q(reviews__status__in=REVIEWS_HOLDING_A_PLACE) & ~Q(reviews__rater_id__in=requeued_raters(study))
    return (
        Conversation.objects.filter(study=study, status=Conversation.Status.COMPLETED)
        .exclude(rater=rater)
        .exclude(rater_id__in=excluded_raters(study))
        .exclude(reviews__rater=rater)
        .annotate(n_reviews=Count("reviews", filter=counted, distinct=True))
        .filter(n_reviews__lt=study.review_overlap)
        .order_by("n_reviews", "ended_at", "pk")
    )


def review_overview(rater: User) -> list[dict[str, object]]:
    """Active studies where the rater has review work: conversations left to claim and their open review."""
    studies = Study.objects.filter(
        is_active=True, review_overlap__gt=0, conversations__status=Conversation.Status.COMPLETED
    )
    rows = []
    for study in studies.distinct().order_by("name"):
        available = reviewable_conversations(study=study, rater=rater).count()
        open_review = ReviewAssignment.objects.filter(
            rater=rater, conversation__study=study, status=ReviewAssignment.Status.OPEN
        ).first()
        if available or open_review:
            rows.append({"study": study, "available": available, "open_review": open_review})
    return rows


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def review_empty_reasons(rater: User) -> list[str]:
    """Why the rater has nothing to review (when `review_overview` is empty), from the data: the finished
    conversations of the active studies with a review pass, by what keeps each from them. A rater told only
    "nothing to review" cannot tell a quiet study from a rule (their own conversations are never offered)."""
    studies = list(Study.objects.filter(is_active=True, review_overlap__gt=0).order_by("name"))
    if not studies:
        return ["No open study has a review pass."]
    finished = own = excluded = reviewed = full = 0
    for study in studies:
        done = Conversation.objects.filter(study=study, status=Conversation.Status.COMPLETED)
        finished += done.count()
        own += done.filter(rater=rater).count()
        others = done.exclude(rater=rater)
        excluded += others.filter(rater_id__in=excluded_raters(study)).count()
        others = others.exclude(rater_id__in=excluded_raters(study))
        reviewed += others.filter(reviews__rater=rater).distinct().count()
        full += others.exclude(reviews__rater=rater).count()  # nothing claimable is left: all have their reviews
    if not finished:
        return ["No conversation has been finished yet: a conversation is offered for review once its rater ends it."]
    reasons = []
    if own:
        reasons.append(
            f"{_count(own, 'finished conversation is', 'finished conversations are')} your own: nobody reviews "
            "their own conversations."
        )
    if reviewed:
        reasons.append(
            f"You have already reviewed {_count(reviewed, 'conversation', 'conversations')} (each is offered to "
            "you once, an expired review included)."
        )
    if full:
        reasons.append(
            f"{_count(full, 'conversation has', 'conversations have')} all the reviewers the study asks for."
        )
    if excluded:
        reasons.append(f"{_count(excluded, 'conversation is', 'conversations are')} by raters excluded from the study.")
    return reasons


def rater_reviews(rater: User) -> QuerySet[ReviewAssignment]:
    return ReviewAssignment.objects.filter(rater=rater).select_related("conversation__study", "conversation__scenario")


def review_turns(conversation: Conversation, *, all_branches: bool) -> list[Turn]:
    """The turns a reviewer tags, in reading order: the lived path, or with every sampled branch too.

    Branches only start at a user turn (unchosen replies get no children), so all branches are the
    lived path plus, after each user turn, every reply sampled for it.
    """
    path = lived_path(conversation)
    if not all_branches:
        return path
    replies = tree.replies_by_parent(
        conversation.turns.filter(role=Turn.Role.ASSISTANT, is_attention_check=False).select_related("model_config")
    )
    ordered: list[Turn] = []
    for turn in path:
        if turn.role == Turn.Role.USER:
            ordered.append(turn)
            ordered.extend(replies.get(turn.pk, []))
    return ordered


def compared_replies(user_turns: Iterable[Turn]) -> dict[int, list[Turn]]:
    """What a vote on each of these user turns compares, by user turn id: its finished candidates in slot
    order (`tree.finished_candidates`). One query, whether for a review page or for a single vote.
    Planted attention checks are left out: they test the live rater only."""
    ids = [turn.pk for turn in user_turns]
    replies = tree.replies_by_parent(
        Turn.objects.filter(parent_id__in=ids, role=Turn.Role.ASSISTANT, is_attention_check=False)
    )
    return {pk: tree.finished_candidates(replies.get(pk, [])) for pk in ids}


def review_vote_steps(*, conversation: Conversation, rater: User, path: list[Turn]) -> dict[int, dict[str, object]]:
    """The branch points a reviewer votes on, by user turn id: each user turn of the lived `path` with
    at least two replies to compare (`compared_replies`), and the reviewer's vote."""
    user_turns = [turn for turn in path if turn.role == Turn.Role.USER]
    candidates = compared_replies(user_turns)
    votes = Comparison.objects.filter(conversation=conversation, rater=rater, task=Comparison.Task.REVIEW)
    by_parent = {vote.parent_id: vote for vote in votes}
    on_path = {t.pk for t in path}
    return {
        turn.pk: {"parent": turn, "candidates": candidates[turn.pk], "vote": by_parent.get(turn.pk), "on_path": on_path}
        for turn in user_turns
        if len(candidates[turn.pk]) >= 2
    }


# --- qualification -------------------------------------------------------------------------


def participant_of(study: Study, rater: User) -> Participant | None:
    """The rater's place in the study, if they have one yet (pages only read it; services create it)."""
    return Participant.objects.filter(study=study, user=rater).first()


def qualification_items(study: Study) -> list[GoldItem]:
    return list(
        GoldItem.objects.filter(study=study, kind=GoldItem.Kind.QUALIFICATION).prefetch_related("expected_labels")
    )


def has_qualification(study: Study) -> bool:
    return GoldItem.objects.filter(study=study, kind=GoldItem.Kind.QUALIFICATION).exists()


@dataclass
class QualificationState:
    """Where a rater stands in a study's qualification."""

    study: Study
    participant: Participant | None
    items: list[GoldItem]
    answers: dict[int, GoldAnswer] = field(default_factory=dict)  # by item id

    @property
    def required(self) -> bool:
        """Whether the rater still has to pass before real work (failing does not lift it)."""
        return bool(self.items) and not self.qualified

    @property
    def qualified(self) -> bool:
        return self.participant is not None and self.participant.qualified_at is not None

    @property
    def failed(self) -> bool:
        """Screened out, or every item answered without reaching the pass mark."""
        if self.qualified:
            return False
        if self.participant is not None and self.participant.status == Participant.Status.SCREENED_OUT:
            return True
        return bool(self.items) and self.next_item is None

    @property
    def next_item(self) -> GoldItem | None:
        return next((item for item in self.items if item.pk not in self.answers), None)

    @property
    def number(self) -> int:
        """The next item's number, from 1."""
        return len(self.answers) + 1

    @property
    def passed(self) -> int:
        return sum(answer.passed for answer in self.answers.values())


def qualification_state(study: Study, rater: User) -> QualificationState:
    items = qualification_items(study)
    answers = GoldAnswer.objects.filter(item__in=items, rater=rater).prefetch_related("labels")
    return QualificationState(
        study=study,
        participant=participant_of(study, rater),
        items=items,
        answers={answer.item_id: answer for answer in answers},
    )


def studies_to_qualify(studies: Iterable[Study], rater: User) -> set[int]:
    """Of these studies, the ids of those whose qualification the rater still has to take (two queries)."""
    ids = {study.pk for study in studies}
    with_items = set(
        GoldItem.objects.filter(study_id__in=ids, kind=GoldItem.Kind.QUALIFICATION).values_list("study_id", flat=True)
    )
    qualified = set(
        Participant.objects.filter(study_id__in=with_items, user=rater, qualified_at__isnull=False).values_list(
            "study_id", flat=True
        )
    )
    return with_items - qualified


# A reviewer meets the study's attention gold items (GoldItem.Kind.ATTENTION) between reviews: one after
# their 1st finished review, the next after their 3rd, then 5th… while items they have not answered remain.
REVIEWS_BETWEEN_CHECKS = 2


def attention_item_due(study: Study, rater: User) -> GoldItem | None:
    """The attention gold item the rater tags before claiming their next review, or None: none is due
    (see REVIEWS_BETWEEN_CHECKS), a review of theirs is open (it resumes first), the study is closed, or the
    rater is excluded (the claim refuses them)."""
    if not study.is_active or Participant.objects.filter(study=study, user=rater, excluded=True).exists():
        return None
    reviews = ReviewAssignment.objects.filter(conversation__study=study, rater=rater)
    if reviews.filter(status=ReviewAssignment.Status.OPEN).exists():
        return None
    answered = GoldAnswer.objects.filter(item__study=study, item__kind=GoldItem.Kind.ATTENTION, rater=rater).count()
    done = reviews.filter(status=ReviewAssignment.Status.DONE).count()
    if done < 1 + answered * REVIEWS_BETWEEN_CHECKS:
        return None
    return (
        GoldItem.objects.filter(study=study, kind=GoldItem.Kind.ATTENTION)
        .exclude(answers__rater=rater)
        .prefetch_related("expected_labels")
        .first()
    )
