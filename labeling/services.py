"""Writes for taxonomies, tags and the review pass. Views, admin, commands and tasks come through here."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import yaml
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from annotate.models import Comparison, Conversation, Study, Turn
from annotate.services import comparison_clean
from core.errors import ActionRefused
from labeling.models import Label, ReviewAssignment, Tag, Taxonomy
from labeling.selectors import DEFAULT_TAXONOMY_SLUG, compared_replies, reviewable_conversations, taxonomy_for

DEFAULT_TAXONOMY_FILE = Path(__file__).parent / "default_taxonomy.yaml"
LABEL_FIELDS = ("name", "title", "kind", "definition", "examples", "roles", "takes_span", "links_turn", "polarity",
                "key", "colour")  # fmt: skip


# --- taxonomies ----------------------------------------------------------------------------


def taxonomy_to_yaml(taxonomy: Taxonomy) -> str:
    """The taxonomy as YAML, in the format taxonomy_from_yaml reads."""
    document = {
        "name": taxonomy.name,
        "slug": taxonomy.slug,
        "description": taxonomy.description,
        "labels": [{field: getattr(label, field) for field in LABEL_FIELDS} for label in taxonomy.labels.all()],
    }
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


@transaction.atomic
def taxonomy_from_yaml(text: str, *, slug: str | None = None) -> Taxonomy:
    """Create or replace a taxonomy from YAML. Labels already used by tags are updated, never deleted."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ActionRefused(f"The YAML does not parse: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("labels"), list):
        raise ActionRefused("A taxonomy is a mapping with 'name', 'slug' and a list of 'labels'.")
    slug = slug or str(document.get("slug") or "").strip()
    if not slug:
        raise ActionRefused("The taxonomy needs a 'slug'.")
    taxonomy, _ = Taxonomy.objects.update_or_create(
        slug=slug,
        defaults={"name": str(document.get("name") or slug), "description": str(document.get("description") or "")},
    )
    seen_names, seen_keys = set(), set()
    for order, raw in enumerate(document["labels"]):
        if not isinstance(raw, dict) or not raw.get("name") or not raw.get("definition"):
            raise ActionRefused(f"Label {order + 1}: 'name' and 'definition' are required.")
        unknown = set(raw) - set(LABEL_FIELDS)
        if unknown:
            raise ActionRefused(f"Label {raw['name']}: unknown fields {', '.join(sorted(unknown))}.")
        fields: dict[str, Any] = {k: raw[k] for k in LABEL_FIELDS if k in raw and k != "name"}
        fields.setdefault("title", str(raw["name"]).replace("-", " ").capitalize())
        fields["key"] = str(fields.get("key") or "")[:1]
        for field, choices in (("kind", Label.Kind.values), ("roles", Label.Roles.values)):
            if field in fields and fields[field] not in choices:
                raise ActionRefused(f"Label {raw['name']}: {field} must be one of {', '.join(choices)}.")
        if raw["name"] in seen_names or (fields["key"] and fields["key"] in seen_keys):
            raise ActionRefused(f"Label {raw['name']}: its name or key is used twice.")
        seen_names.add(raw["name"])
        seen_keys.add(fields["key"])
        Label.objects.update_or_create(taxonomy=taxonomy, name=raw["name"], defaults={**fields, "order": order})
    unused = taxonomy.labels.exclude(name__in=seen_names).filter(tags__isnull=True)
    unused.delete()
    return taxonomy


def default_taxonomy() -> Taxonomy:
    """The shipped taxonomy (default_taxonomy.yaml), created if missing.

    A data migration creates it with the database; `setup_demo` and the tests call this to put it
    back after it was deleted. Pages only ever read it (`selectors.taxonomy_for`).
    """
    existing = Taxonomy.objects.filter(slug=DEFAULT_TAXONOMY_SLUG).first()
    return existing or taxonomy_from_yaml(DEFAULT_TAXONOMY_FILE.read_text())


# --- tags ----------------------------------------------------------------------------------


def _taggable_turn(*, rater: User, turn_id: int, task: str) -> Turn:
    """The turn, if this rater may tag it in this task; 404 otherwise (as for any foreign id)."""
    turn = Turn.objects.select_related("conversation__study").filter(pk=turn_id).first()
    if turn is None:
        raise ActionRefused("No such turn.", status=404)
    conversation = turn.conversation
    if task == Tag.Task.LIVE:
        allowed = conversation.rater_id == rater.pk and conversation.status == Conversation.Status.ACTIVE
    elif task == Tag.Task.REVIEW:
        allowed = ReviewAssignment.objects.filter(
            conversation=conversation, rater=rater, status=ReviewAssignment.Status.OPEN
        ).exists()
    else:
        raise ActionRefused(f"Unknown task {task!r}.")
    if not allowed:
        raise ActionRefused("No such turn.", status=404)
    if turn.role == Turn.Role.ASSISTANT and turn.status != Turn.Status.DONE:
        raise ActionRefused("Wait until the reply has finished before tagging it.", status=409)
    return turn


def _label(turn: Turn, label: int | str) -> Label:
    taxonomy = taxonomy_for(turn.conversation.study)
    lookup = {"pk": label} if isinstance(label, int) or str(label).isdigit() else {"name": label}
    found = taxonomy.labels.filter(**lookup).first() if taxonomy is not None else None
    if found is None:
        raise ActionRefused(f"Unknown label {label!r} for this study.")
    if not found.applies_to(turn.role):
        raise ActionRefused(f"“{found.title}” is not used on {turn.role} turns.")
    return found


def _span(label: Label, turn: Turn, start: int | None, end: int | None) -> tuple[int | None, int | None]:
    if start is None and end is None:
        return None, None
    if not label.takes_span:
        raise ActionRefused(f"“{label.title}” applies to the whole turn, not to a span.")
    if start is None or end is None or not 0 <= start < end <= len(turn.text):
        raise ActionRefused(f"The span {start}–{end} is outside the turn's text (0–{len(turn.text)}).")
    return start, end


def _link(label: Label, turn: Turn, linked_turn_id: int | None) -> Turn | None:
    if linked_turn_id is None:
        return None
    if not label.links_turn:
        raise ActionRefused(f"“{label.title}” does not link to another turn.")
    linked = Turn.objects.filter(pk=linked_turn_id, conversation_id=turn.conversation_id).first()
    if linked is None:
        raise ActionRefused("The linked turn is not part of this conversation.")
    if linked.depth >= turn.depth:
        raise ActionRefused("A tag can only link to an earlier turn.")
    return linked


@transaction.atomic
def tag_add(
    *,
    rater: User,
    turn_id: int,
    label: int | str,
    task: str = Tag.Task.LIVE,
    span_start: int | None = None,
    span_end: int | None = None,
    linked_turn_id: int | None = None,
) -> Tag:
    """Tag a turn. Adding the same tag twice returns the first (idempotent); a suggestion is confirmed."""
    turn = _taggable_turn(rater=rater, turn_id=turn_id, task=task)
    found = _label(turn, label)
    start, end = _span(found, turn, span_start, span_end)
    linked = _link(found, turn, linked_turn_id)
    tag, created = Tag.objects.get_or_create(
        turn=turn,
        label=found,
        rater=rater,
        task=task,
        span_start=start,
        span_end=end,
        defaults={"linked_turn": linked},
    )
    if not created and (tag.status != Tag.Status.CONFIRMED or tag.linked_turn_id != (linked and linked.pk)):
        tag.status = Tag.Status.CONFIRMED
        tag.linked_turn = linked or tag.linked_turn
        tag.decided_at = tag.decided_at or timezone.now()
        tag.save(update_fields=["status", "linked_turn", "decided_at"])
    return tag


def _own_tag(rater: User, tag_id: int) -> Tag:
    tag = Tag.objects.select_related("turn__conversation").filter(pk=tag_id, rater=rater).first()
    if tag is None:
        raise ActionRefused("No such tag.", status=404)
    _taggable_turn(rater=rater, turn_id=tag.turn_id, task=tag.task)  # the task must still be open
    return tag


@transaction.atomic
def tag_remove(*, rater: User, tag_id: int) -> None:
    """Remove the rater's own tag (a suggestion is rejected instead, so acceptance can be measured)."""
    tag = _own_tag(rater, tag_id)
    if tag.source == Tag.Source.SUGGESTION:
        suggestion_decide(rater=rater, tag_id=tag.pk, accept=False)
    else:
        tag.delete()


@transaction.atomic
def suggestion_decide(*, rater: User, tag_id: int, accept: bool) -> Tag:
    """Confirm or reject a suggested tag. Deciding again with the same answer changes nothing."""
    tag = _own_tag(rater, tag_id)
    if tag.source != Tag.Source.SUGGESTION:
        raise ActionRefused("Only suggestions can be accepted or rejected.")
    tag.status = Tag.Status.CONFIRMED if accept else Tag.Status.REJECTED
    tag.decided_at = timezone.now()
    tag.save(update_fields=["status", "decided_at"])
    return tag


def untagged_candidates(*, rater: User, candidates: list[Turn]) -> list[Turn]:
    """Candidates without any confirmed live tag from the rater (for studies that require tags)."""
    tagged = set(
        Tag.objects.filter(
            turn__in=candidates, rater=rater, task=Tag.Task.LIVE, status=Tag.Status.CONFIRMED
        ).values_list("turn_id", flat=True)
    )
    return [c for c in candidates if c.pk not in tagged]


# --- review pass ---------------------------------------------------------------------------


@transaction.atomic
def review_claim(*, rater: User, study: Study) -> ReviewAssignment:
    """The rater's open review in the study, or a new one on the least-reviewed finished conversation.

    Claims are serialised per study (the study row is locked), so two raters claiming at once
    cannot push a conversation past `study.review_overlap`.
    """
    open_review = ReviewAssignment.objects.filter(
        rater=rater, conversation__study=study, status=ReviewAssignment.Status.OPEN
    ).first()
    if open_review is not None:
        return open_review
    Study.objects.select_for_update().filter(pk=study.pk).first()
    conversation = reviewable_conversations(study=study, rater=rater).first()
    if conversation is None:
        raise ActionRefused("Nothing left to review in this study. Thank you!", status=409)
    return ReviewAssignment.objects.create(conversation=conversation, rater=rater)


@transaction.atomic
def review_finish(*, rater: User, assignment_id: int) -> ReviewAssignment:
    """Mark the rater's review as done. Finishing twice is harmless; anyone else's review is a 404."""
    assignment = ReviewAssignment.objects.select_for_update().filter(pk=assignment_id, rater=rater).first()
    if assignment is None:
        raise ActionRefused("No such review.", status=404)
    if assignment.status != ReviewAssignment.Status.DONE:
        assignment.status = ReviewAssignment.Status.DONE
        assignment.done_at = timezone.now()
        assignment.save(update_fields=["status", "done_at"])
    return assignment


@transaction.atomic
def review_vote(
    *,
    rater: User,
    assignment_id: int,
    parent_id: int,
    choice: str,
    chosen_id: int | None = None,
    strength: str = "",
    reason: str = "",
    idempotency_key: uuid.UUID,
) -> Comparison:
    """The reviewer's own preference among the replies to one user turn of the conversation they review.

    Nothing is rewritten and the conversation does not move: the vote is only there to be compared
    with the live rater's and the other reviewers'. Idempotent on `idempotency_key` (a resend returns
    the vote stored); a new vote on a message the reviewer already voted on replaces that vote, as
    tags can be removed while a review is open. Anyone else's review is a 404, a finished one a 409.
    """
    # The lock serialises one reviewer's votes, so two quick changes cannot both insert.
    assignment = ReviewAssignment.objects.select_for_update().filter(pk=assignment_id, rater=rater).first()
    if assignment is None:
        raise ActionRefused("No such review.", status=404)
    existing = Comparison.objects.filter(idempotency_key=idempotency_key).first()
    if existing is not None:
        if (existing.task, existing.rater_id, existing.conversation_id) != (
            Comparison.Task.REVIEW,
            rater.pk,
            assignment.conversation_id,
        ):
            raise ActionRefused("That request key belongs to another vote.", status=409)
        return existing
    if assignment.status != ReviewAssignment.Status.OPEN:
        raise ActionRefused("This review is finished: its votes can no longer change.", status=409)
    parent = Turn.objects.filter(pk=parent_id, conversation_id=assignment.conversation_id).first()
    if parent is None:
        raise ActionRefused("No such message in the conversation you are reviewing.", status=404)
    if parent.role != Turn.Role.USER:
        raise ActionRefused("Votes compare the replies to a user message; this turn is a reply.")
    candidates = compared_replies([parent])[parent.pk]
    if len(candidates) < 2:
        raise ActionRefused("This message has fewer than two finished replies: there is nothing to compare.")
    chosen, strength, reason = comparison_clean(
        candidates=candidates, choice=choice, chosen_id=chosen_id, strength=strength, reason=reason
    )
    vote = Comparison.objects.filter(parent=parent, rater=rater).first()
    if vote is not None and vote.task != Comparison.Task.REVIEW:
        raise ActionRefused("You already voted on this message in the live session.", status=409)
    if vote is None:
        vote = Comparison(conversation_id=assignment.conversation_id, parent=parent, rater=rater)
        vote.task = Comparison.Task.REVIEW
    vote.choice, vote.chosen, vote.strength, vote.reason = choice, chosen, strength, reason
    vote.idempotency_key = idempotency_key
    vote.save()
    return vote
