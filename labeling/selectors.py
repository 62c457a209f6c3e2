"""Reads for tagging: the labels a study uses, the tags a rater put on turns, the review pass."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from django.contrib.auth.models import User
from django.db.models import Count, QuerySet

from annotate import tree
from annotate.models import Comparison, Conversation, Study, Turn
from annotate.selectors import lived_path
from labeling.models import Label, ReviewAssignment, Tag, Taxonomy

DEFAULT_TAXONOMY_SLUG = "default"


def taxonomy_for(study: Study) -> Taxonomy | None:
    """The study's taxonomy, or the shipped default (created by a migration; None if it was deleted)."""
    if study.taxonomy_id is not None:
        return study.taxonomy
    return Taxonomy.objects.filter(slug=DEFAULT_TAXONOMY_SLUG).first()


def labels_for(study: Study) -> list[Label]:
    taxonomy = taxonomy_for(study)
    return list(taxonomy.labels.all()) if taxonomy is not None else []


def tags_by_turn(*, turn_ids: Iterable[int], rater: User, task: str) -> dict[int, list[Tag]]:
    """The rater's tags (confirmed and pending suggestions) on these turns, by turn id."""
    found: dict[int, list[Tag]] = defaultdict(list)
    tags = (
        Tag.objects.filter(turn_id__in=list(turn_ids), rater=rater, task=task)
        .exclude(status=Tag.Status.REJECTED)
        .select_related("label")
    )
    for tag in tags:
        found[tag.turn_id].append(tag)
    return found


# --- review pass ---------------------------------------------------------------------------


def reviewable_conversations(*, study: Study, rater: User) -> QuerySet[Conversation]:
    """Finished conversations of the study this rater may still claim: not their own, not reviewed
    by them, and reviewed by fewer than `study.review_overlap` raters. Least reviewed first, then the
    longest finished, so a claim spreads reviews evenly."""
    return (
        Conversation.objects.filter(study=study, status=Conversation.Status.COMPLETED)
        .exclude(rater=rater)
        .exclude(reviews__rater=rater)
        .annotate(n_reviews=Count("reviews", distinct=True))
        .filter(n_reviews__lt=study.review_overlap)
        .order_by("n_reviews", "ended_at", "pk")
    )


def review_overview(rater: User) -> list[dict[str, object]]:
    """Studies where the rater has review work: conversations left to claim and their open review."""
    studies = Study.objects.filter(review_overlap__gt=0, conversations__status=Conversation.Status.COMPLETED)
    rows = []
    for study in studies.distinct().order_by("name"):
        available = reviewable_conversations(study=study, rater=rater).count()
        open_review = ReviewAssignment.objects.filter(
            rater=rater, conversation__study=study, status=ReviewAssignment.Status.OPEN
        ).first()
        if available or open_review:
            rows.append({"study": study, "available": available, "open_review": open_review})
    return rows


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
    replies = tree.replies_by_parent(conversation.turns.filter(role=Turn.Role.ASSISTANT).select_related("model_config"))
    ordered: list[Turn] = []
    for turn in path:
        if turn.role == Turn.Role.USER:
            ordered.append(turn)
            ordered.extend(replies.get(turn.pk, []))
    return ordered


def compared_replies(user_turns: Iterable[Turn]) -> dict[int, list[Turn]]:
    """What a vote on each of these user turns compares, by user turn id: its finished candidates in slot
    order (`tree.finished_candidates`). One query, whether for a review page or for a single vote."""
    ids = [turn.pk for turn in user_turns]
    replies = tree.replies_by_parent(Turn.objects.filter(parent_id__in=ids, role=Turn.Role.ASSISTANT))
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
