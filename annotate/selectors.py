"""Reads: the lived path, the current candidates, a rater's conversations."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import QuerySet

from annotate import tree
from annotate.models import Comparison, Conversation, Study, Turn


def lived_path(conversation: Conversation) -> list[Turn]:
    """The turns from the first user message to the head, in order (one query)."""
    turns = {t.pk: t for t in conversation.turns.select_related("model_config")}
    return tree.path_to(turns, conversation.head_id)


def messages_before(turn: Turn) -> list[dict[str, str]]:
    """The conversation path above `turn` as chat messages: the prompt a model sees."""
    turns = Turn.objects.filter(conversation_id=turn.conversation_id).only("id", "parent_id", "role", "text")
    path = tree.path_to({t.pk: t for t in turns}, turn.parent_id)
    return [{"role": t.role, "content": t.text} for t in path]


def awaiting_vote(conversation: Conversation) -> Turn | None:
    """The user turn whose candidates still need a choice, if any."""
    head = conversation.head
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
