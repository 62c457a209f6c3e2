"""Reads: the lived path, the current candidates, a rater's conversations."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Prefetch, QuerySet

from annotate.models import Comparison, Conversation, Study, Turn


def _chain(turns: Iterable[Turn], tip_id: int | None) -> list[Turn]:
    by_id = {t.pk: t for t in turns}
    chain: list[Turn] = []
    while tip_id is not None and tip_id in by_id:
        turn = by_id[tip_id]
        chain.append(turn)
        tip_id = turn.parent_id
    chain.reverse()
    return chain


def lived_path(conversation: Conversation) -> list[Turn]:
    """The turns from the first user message to the head, in order (one query)."""
    return _chain(conversation.turns.select_related("model_config"), conversation.head_id)


def messages_before(turn: Turn) -> list[dict[str, str]]:
    """The conversation path above `turn` as chat messages: the prompt a model sees."""
    turns = Turn.objects.filter(conversation_id=turn.conversation_id).only("id", "parent_id", "role", "text")
    return [{"role": t.role, "content": t.text} for t in _chain(turns, turn.parent_id)]


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


def rater_conversations(user: object) -> QuerySet[Conversation]:
    return Conversation.objects.filter(rater=user).select_related("study", "scenario").order_by("-started_at")


def open_studies() -> QuerySet[Study]:
    return Study.objects.filter(is_active=True).order_by("name")


def transcript(conversation: Conversation) -> list[dict[str, object]]:
    """The lived path as steps: each user turn with every reply sampled for it and the vote.

    Branches only ever start at a user turn (unchosen candidates get no children), so this
    shows the whole tree.
    """
    live_votes = Prefetch("comparisons", Comparison.objects.filter(task=Comparison.Task.LIVE), to_attr="live_votes")
    turns = list(conversation.turns.select_related("model_config").prefetch_related(live_votes))
    path = _chain(turns, conversation.head_id)
    on_path = {t.pk for t in path}
    replies: dict[int, list[Turn]] = {}
    for t in sorted(turns, key=lambda t: (t.position, t.pk)):
        if t.role == Turn.Role.ASSISTANT and t.parent_id is not None:
            replies.setdefault(t.parent_id, []).append(t)
    steps = []
    for t in path:
        if t.role == Turn.Role.USER:
            comparison = t.live_votes[0] if t.live_votes else None  # type: ignore[attr-defined]
            steps.append({"user": t, "replies": replies.get(t.pk, []), "comparison": comparison, "on_path": on_path})
    return steps
