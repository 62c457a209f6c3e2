"""Reads: the lived path, the current candidates, a rater's conversations."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Count, Exists, OuterRef, Q, QuerySet

from annotate import tree
from annotate.models import Comparison, Conversation, Participant, Scenario, Study, Turn


def lived_path(conversation: Conversation) -> list[Turn]:
    """The turns from the first user message to the head, in order (one query)."""
    turns = {t.pk: t for t in conversation.turns.select_related("model_config")}
    return tree.path_to(turns, conversation.head_id)


def messages_before(turn: Turn) -> list[dict[str, str]]:
    """The conversation path above `turn` as chat messages: the prompt a model sees."""
    turns = Turn.objects.filter(conversation_id=turn.conversation_id).only("id", "parent_id", "role", "text")
    path = tree.path_to({t.pk: t for t in turns}, turn.parent_id)
    return [{"role": t.role, "content": t.text} for t in path]


def awaiting_vote(conversation: Conversation, path: list[Turn] | None = None) -> Turn | None:
    """The user turn whose candidates still need a choice, if any. With the lived `path` already read, its last
    turn is the head (no query for it)."""
    head = conversation.head if path is None else (path[-1] if path else None)
    if head is not None and head.role == Turn.Role.USER:
        return head
    return None


def candidates_of(parent: Turn) -> list[Turn]:
    """The sampled candidates answering a user turn, in display order (rewrites excluded)."""
    return list(parent.children.filter(is_rewrite=False).select_related("model_config").order_by("position"))


def user_turn_count(conversation: Conversation) -> int:
    return conversation.turns.filter(role=Turn.Role.USER).count()


def rater_conversations(user: User) -> QuerySet[Conversation]:
    return Conversation.objects.filter(rater=user).select_related("study", "scenario").order_by("-started_at")


def open_studies() -> QuerySet[Study]:
    return Study.objects.filter(is_active=True).order_by("name")


def transcript(conversation: Conversation) -> list[dict[str, object]]:
    """The lived path as steps: each user turn with every reply sampled for it and the vote.

    Branches only ever start at a user turn (unchosen candidates get no children), so this
    shows the whole tree.
    """
    turns: dict[int, Turn] = {t.pk: t for t in conversation.turns.select_related("model_config")}
    live_votes = {c.parent_id: c for c in conversation.comparisons.filter(task=Comparison.Task.LIVE)}
    path = tree.path_to(turns, conversation.head_id)
    on_path = {t.pk for t in path}
    replies = tree.replies_by_parent(turns.values())
    steps = []
    for t in path:
        if t.role == Turn.Role.USER:
            vote = live_votes.get(t.pk)
            steps.append({"user": t, "replies": replies.get(t.pk, []), "comparison": vote, "on_path": on_path})
    return steps


# --- quality control ---------------------------------------------------------------------------


def excluded_raters(study: Study) -> QuerySet[Participant, Any]:
    """The user ids (`values("user_id")`, usable as a subquery) of the study's excluded raters: their
    conversations, votes and tags are left out of dashboards and exports unless asked for."""
    return Participant.objects.filter(study=study, excluded=True).values("user_id")


def requeued_raters(study: Study) -> QuerySet[Participant, Any]:
    """The user ids of the excluded raters whose work was handed out again (`Participant.requeued`)."""
    return Participant.objects.filter(study=study, excluded=True, requeued=True).values("user_id")


# A scenario's overlap counts the conversations still holding a place on it: active and completed ones.
# Expired and abandoned ones gave their place back (docs/assignment.md).
HOLDING_A_PLACE = (Conversation.Status.ACTIVE, Conversation.Status.COMPLETED)


def counted_towards_overlap(study: Study, prefix: str = "") -> Q:
    """The conversations that count towards a scenario's overlap (`prefix`: the path to the conversation,
    e.g. "conversations__"): active or completed (not expired, not abandoned), and not by a rater excluded
    with their work re-queued."""
    return Q(**{f"{prefix}status__in": HOLDING_A_PLACE}) & ~Q(**{f"{prefix}rater_id__in": requeued_raters(study)})


# --- assignment: what a start hands out, expiry, progress ------------------------------------------


def expiry_cutoff(study: Study, now: datetime) -> datetime | None:
    """Active conversations of the study whose last activity is before this have expired (None: the study's
    `assignment_timeout_minutes` is 0, nothing expires)."""
    minutes = study.assignment_timeout_minutes
    return now - timedelta(minutes=minutes) if minutes > 0 else None


def studies_by_timeout(study: Study | None = None) -> dict[int, list[int]]:
    """Study ids by their `assignment_timeout_minutes`, for the expiry sweeps (conversations and reviews):
    just `study`, or every study that expires work (0 means never)."""
    studies = [study] if study is not None else list(Study.objects.filter(assignment_timeout_minutes__gt=0))
    by_timeout: dict[int, list[int]] = {}
    for each in studies:
        if each.assignment_timeout_minutes > 0:
            by_timeout.setdefault(each.assignment_timeout_minutes, []).append(each.pk)
    return by_timeout


def idle_conversations(cutoff: datetime, prefix: str = "") -> Q:
    """Conversations whose last activity is before `cutoff` (one that never recorded any counts from its
    start: conversations from before `last_activity_at` existed)."""
    return Q(**{f"{prefix}last_activity_at__lt": cutoff}) | Q(
        **{f"{prefix}last_activity_at__isnull": True, f"{prefix}started_at__lt": cutoff}
    )


def scenarios_open_to(study: Study, rater: User) -> QuerySet[Scenario]:
    """The study's scenarios the rater may be handed now: none they ever had a conversation on (whatever became
    of it: completed, expired or abandoned), and fewer than `study.overlap` conversations holding a place
    (`counted_towards_overlap`). Least used first, then in import order. Only meaningful under the study's
    lock (`services.conversation_start`), and after expiring the study's idle conversations."""
    had = Conversation.objects.filter(study=study, rater=rater).values("scenario_id")
    return (
        Scenario.objects.filter(study=study)
        .exclude(pk__in=had)
        .annotate(n=Count("conversations", filter=counted_towards_overlap(study, "conversations__")))
        .filter(n__lt=study.overlap)
        .order_by("n", "pk")
    )


def conversations_holding_a_place(study: Study, rater: User) -> int:
    """The rater's conversations in the study that count towards their quota (`conversations_per_rater`):
    active and completed ones."""
    return Conversation.objects.filter(study=study, rater=rater, status__in=HOLDING_A_PLACE).count()


def scenario_progress(scenarios: QuerySet[Scenario]) -> QuerySet[Scenario]:
    """The scenarios with their assignment counts, in the same query: `n_active`, `n_completed`, `n_expired`,
    `n_abandoned` (conversations by status) and `n_assigned`, the conversations holding a place (active and
    completed, not by a rater excluded with their work re-queued): what `study.overlap` is compared with."""
    status = Conversation.Status
    requeued = Participant.objects.filter(
        study_id=OuterRef("conversations__study_id"),
        user_id=OuterRef("conversations__rater_id"),
        excluded=True,
        requeued=True,
    )
    return scenarios.annotate(
        n_active=Count("conversations", filter=Q(conversations__status=status.ACTIVE)),
        n_completed=Count("conversations", filter=Q(conversations__status=status.COMPLETED)),
        n_expired=Count("conversations", filter=Q(conversations__status=status.EXPIRED)),
        n_abandoned=Count("conversations", filter=Q(conversations__status=status.ABANDONED)),
        n_assigned=Count("conversations", filter=Q(Q(conversations__status__in=HOLDING_A_PLACE), ~Exists(requeued))),
    )
