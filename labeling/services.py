"""Writes for taxonomies, tags and the review pass. Views, admin, commands and tasks come through here."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import yaml
from django.contrib.auth.models import User
from django.db import models, transaction
from django.db.models import F, Q
from django.utils import timezone

from annotate.models import Comparison, Conversation, Participant, Study, Turn
from annotate.panel import participant_screen_out
from annotate.selectors import studies_by_timeout
from annotate.services import (
    comparison_clean,
    conversation_touch,
    expired_message,
    gold_passed_add,
)
from annotate.services import demo_setup as annotate_demo_setup
from core.errors import ActionRefused
from core.tasks import task_send
from core.validation import check_storable, check_structure, is_id, parse_json, parse_yaml, unstorable
from labeling import agreement
from labeling.dashboard import dashboard_to_json, study_dashboard
from labeling.models import DashboardSnapshot, GoldAnswer, GoldItem, Label, ReviewAssignment, Tag, Taxonomy
from labeling.selectors import (
    DEFAULT_TAXONOMY_SLUG,
    compared_replies,
    labels_for,
    qualification_state,
    reviewable_conversations,
    taxonomy_labels,
)

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


# Keys the rating pages already use: the vote keys of session.js (1–9 pick a reply, t tie, b all bad,
# s strength, r rewrite) and tagging.js's [ and ] (move the tag focus). A label cannot take them.
RESERVED_KEYS = frozenset("123456789tbsr[]")
MAX_LABELS = 500
MAX_EXAMPLE_CHARS = 2000
_SLUG = re.compile(r"[-a-zA-Z0-9_]+")
_COLOUR = re.compile(r"#[0-9a-fA-F]{6}")


def _max_length(model: type[Label] | type[Taxonomy], field: str) -> int:
    found = model._meta.get_field(field)
    assert isinstance(found, models.Field) and found.max_length is not None, field
    return found.max_length


def _yaml_type(value: object) -> str:
    names = {bool: "true/false", dict: "a mapping", list: "a list", type(None): "empty", str: "text"}
    return names.get(type(value), type(value).__name__)


def _text(
    where: str, field: str, value: object, *, limit: int | None = None, one_line: bool = False, strip: bool = True
) -> str:
    """A text field of the taxonomy or a label: a string, storable, one line if asked, within `limit`."""
    if not isinstance(value, str):
        raise ActionRefused(f"{where}: '{field}' must be text, not {_yaml_type(value)}.")
    text = check_storable(value.strip() if strip else value, what=f"{where}: '{field}'")
    if one_line and ("\n" in text or "\r" in text):
        raise ActionRefused(f"{where}: '{field}' must be one line.")
    if limit is not None and len(text) > limit:
        raise ActionRefused(f"{where}: '{field}' is {len(text):,} characters long; the limit is {limit:,}.")
    return text


def _slug(where: str, field: str, value: object, *, limit: int) -> str:
    slug = _text(where, field, value, limit=limit, strip=False)
    if not _SLUG.fullmatch(slug):
        raise ActionRefused(f"{where}: '{field}' must be a slug (letters, digits, - and _ only), not {slug[:40]!r}.")
    return slug


def _label_key(where: str, value: object) -> str:
    """A label's keyboard shortcut: one character, typed without shift, not a key the pages already use."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 9:
        value = str(value)  # YAML reads `key: 0` as a number
    key = _text(where, "key", "" if value is None else value)
    if not key:
        return ""
    if len(key) != 1 or not key.isprintable() or key.isspace():
        raise ActionRefused(f"{where}: 'key' must be one printable character, not {key[:10]!r}.")
    if key != key.lower():
        raise ActionRefused(f"{where}: 'key' must be lower case ({key.lower()!r}): shortcuts ignore shift.")
    if key in RESERVED_KEYS:
        reserved = " ".join(sorted(RESERVED_KEYS))
        raise ActionRefused(f"{where}: the key {key!r} is taken by the rating page (reserved: {reserved}).")
    return key


def _label_fields(number: int, raw: object) -> tuple[str, dict[str, Any]]:
    """One label of a taxonomy document, every field checked: (name, the other fields to store)."""
    if not isinstance(raw, dict):
        raise ActionRefused(f"Label {number}: a label is a mapping of fields, not {_yaml_type(raw)}.")
    where = f"Label {number}"
    if not raw.get("name") or not raw.get("definition"):
        raise ActionRefused(f"{where}: 'name' and 'definition' are required.")
    unknown = {str(k) for k in raw} - set(LABEL_FIELDS)
    if unknown:
        raise ActionRefused(f"{where}: unknown fields {', '.join(sorted(unknown))}.")
    name = _slug(where, "name", raw["name"], limit=_max_length(Label, "name"))
    if name.isdecimal():
        raise ActionRefused(f"{where}: 'name' cannot be only digits (the tag form reads digits as a label's id).")
    where = f"Label {number} ({name})"
    fields: dict[str, Any] = {"definition": _text(where, "definition", raw["definition"])}
    fields["title"] = _text(
        where, "title", raw.get("title") or name.replace("-", " ").capitalize(),
        limit=_max_length(Label, "title"), one_line=True,
    )  # fmt: skip
    for field, choices in (("kind", Label.Kind.values), ("roles", Label.Roles.values)):
        if field in raw:
            if raw[field] not in choices:
                raise ActionRefused(f"{where}: {field} must be one of {', '.join(choices)}.")
            fields[field] = raw[field]
    examples = raw.get("examples") or []
    if not isinstance(examples, list):
        raise ActionRefused(f"{where}: 'examples' must be a list of texts, not {_yaml_type(examples)}.")
    fields["examples"] = [
        _text(f"{where}, example {i}", "examples", example, limit=MAX_EXAMPLE_CHARS)
        for i, example in enumerate(examples, start=1)
    ]
    for field in ("takes_span", "links_turn"):
        if field in raw:
            if not isinstance(raw[field], bool):
                raise ActionRefused(f"{where}: '{field}' must be true or false, not {_yaml_type(raw[field])}.")
            fields[field] = raw[field]
    if "polarity" in raw:
        polarity = raw["polarity"]
        if not isinstance(polarity, int) or isinstance(polarity, bool) or polarity not in (-1, 0, 1):
            raise ActionRefused(f"{where}: 'polarity' must be -1, 0 or 1, not {str(polarity)[:20]!r}.")
        fields["polarity"] = polarity
    fields["key"] = _label_key(where, raw.get("key"))
    if "colour" in raw:
        colour = _text(where, "colour", raw["colour"])
        if not _COLOUR.fullmatch(colour):
            raise ActionRefused(f"{where}: 'colour' must be #rrggbb (e.g. #2f5bd3), not {colour[:20]!r}.")
        fields["colour"] = colour
    return name, fields


def _taxonomy_document(text: str) -> dict[str, Any]:
    """The parsed YAML, refused when it does not parse, nests too deep or holds what cannot be stored."""
    document = parse_yaml(text)
    if not isinstance(document, dict) or not isinstance(document.get("labels"), list):
        raise ActionRefused("A taxonomy is a mapping with 'name', 'slug' and a list of 'labels'.")
    # taxonomy → labels → label → examples → example: one level more is left to the fields' own checks
    check_structure(document, what="The taxonomy", max_depth=5)
    return document


@transaction.atomic
def taxonomy_from_yaml(text: str, *, slug: str | None = None) -> Taxonomy:
    """Create or replace a taxonomy from YAML. Labels already used by tags are updated, never deleted.

    Every field of the document and of each label is checked (type, choices, length, storable text)
    before anything is written: a refused file changes nothing.
    """
    document = _taxonomy_document(text)
    where = "The taxonomy"
    slug = _slug(where, "slug", slug or document.get("slug") or "", limit=_max_length(Taxonomy, "slug"))
    if not slug:
        raise ActionRefused("The taxonomy needs a 'slug'.")
    name = _text(where, "name", document.get("name") or slug, limit=_max_length(Taxonomy, "name"), one_line=True)
    description = _text(where, "description", document.get("description") or "")
    if len(document["labels"]) > MAX_LABELS:
        raise ActionRefused(f"A taxonomy has at most {MAX_LABELS} labels; this one has {len(document['labels'])}.")
    labels = [_label_fields(number, raw) for number, raw in enumerate(document["labels"], start=1)]
    seen_names: set[str] = set()
    seen_keys: set[str] = set()
    for label_name, fields in labels:
        if label_name in seen_names or (fields["key"] and fields["key"] in seen_keys):
            raise ActionRefused(f"Label {label_name}: its name or key is used twice.")
        seen_names.add(label_name)
        seen_keys.add(fields["key"])
    taxonomy, _ = Taxonomy.objects.update_or_create(slug=slug, defaults={"name": name, "description": description})
    for order, (label_name, fields) in enumerate(labels):
        Label.objects.update_or_create(taxonomy=taxonomy, name=label_name, defaults={**fields, "order": order})
    unused = taxonomy.labels.exclude(name__in=seen_names).filter(tags__isnull=True)
    unused.delete()
    return taxonomy


def default_taxonomy() -> Taxonomy:
    """The shipped taxonomy (default_taxonomy.yaml), created if missing.

    A data migration creates it with the database; `setup_demo` and the tests call this to put it
    back after it was deleted. Pages only ever read it (`selectors.taxonomy_labels`).
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
        if conversation.rater_id == rater.pk and conversation.status == Conversation.Status.EXPIRED:
            raise ActionRefused(expired_message(conversation.study), status=409)
    elif task == Tag.Task.REVIEW:
        review = ReviewAssignment.objects.filter(conversation=conversation, rater=rater).first()
        allowed = review is not None and review.status == ReviewAssignment.Status.OPEN
        if review is not None and review.status == ReviewAssignment.Status.EXPIRED:
            raise ActionRefused(review_expired_message(conversation.study), status=409)
    else:
        raise ActionRefused(f"Unknown task {task!r}.")
    if not allowed:
        raise ActionRefused("No such turn.", status=404)
    if turn.role == Turn.Role.ASSISTANT and turn.status != Turn.Status.DONE:
        raise ActionRefused("Wait until the reply has finished before tagging it.", status=409)
    return turn


def _activity(*, rater: User, turn: Turn, task: str) -> None:
    """Record the rater's activity on what they tag (expiry counts from it): one UPDATE of the live
    conversation, or of their open review of it."""
    if task == Tag.Task.LIVE:
        conversation_touch(turn.conversation_id)
    else:
        ReviewAssignment.objects.filter(
            conversation_id=turn.conversation_id, rater=rater, status=ReviewAssignment.Status.OPEN
        ).update(last_activity_at=timezone.now())


def _label(turn: Turn, label: int | str) -> Label:
    """The label by id (digits) or name. What could not be either is unknown, without a query: a NUL
    or "²" ("²".isdigit() is True, int("²") fails) must not reach the database."""
    lookup: dict[str, int | str] | None
    if isinstance(label, int):
        lookup = {"pk": label}
    elif is_id(label):
        lookup = {"pk": int(label)}
    elif unstorable(label) or len(label) > _max_length(Label, "name"):
        lookup = None
    else:
        lookup = {"name": label}
    found = taxonomy_labels(turn.conversation.study).filter(**lookup).first() if lookup is not None else None
    if found is None:
        raise ActionRefused(f"Unknown label {label!r} for this study.")
    if not found.applies_to(turn.role):
        raise ActionRefused(f"“{found.title}” is not used on {turn.role} turns.")
    if not found.offered_on(turn.role, turn.depth):
        raise ActionRefused(f"“{found.title}” reacts to an earlier reply: the first message has none.")
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
    _activity(rater=rater, turn=turn, task=task)
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
        _activity(rater=rater, turn=tag.turn, task=tag.task)
        tag.delete()


@transaction.atomic
def suggestion_decide(*, rater: User, tag_id: int, accept: bool) -> Tag:
    """Confirm or reject a suggested tag. Deciding again with the same answer changes nothing."""
    tag = _own_tag(rater, tag_id)
    if tag.source != Tag.Source.SUGGESTION:
        raise ActionRefused("Only suggestions can be accepted or rejected.")
    _activity(rater=rater, turn=tag.turn, task=tag.task)
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


def review_expired_message(study: Study) -> str:
    """What a reviewer whose review expired is told (409 on any post to it; its page says it too)."""
    return (
        f"This review has expired: it had no activity for {study.assignment_timeout_minutes} minutes, so the "
        "conversation went back to the pool for other reviewers. Claim a new one from the reviews page."
    )


@transaction.atomic
def review_claim(*, rater: User, study: Study) -> ReviewAssignment:
    """The rater's open review in the study, or a new one on the least-reviewed finished conversation.

    Never their own conversation, never one they had a review of before (done or expired), never past
    `study.review_overlap` open + done reviews (expired ones give their place back), at most one open review
    per rater and study. Claims are serialised per study (the study row is locked, FOR NO KEY UPDATE) and
    everything is counted again under the lock, after the study's idle reviews expired (`reviews_expire`), so
    raters claiming at once never over-assign. A closed study (`is_active` off) is refused (409): its reviews
    are no longer handed out, as its conversations are not.
    """
    if not study.is_active:
        raise ActionRefused("This study is closed: its conversations are no longer reviewed.", status=409)
    if Participant.objects.filter(study=study, user=rater, excluded=True).exists():
        raise ActionRefused("Your work in this study has ended: there is nothing more to review.", status=403)
    open_review = _open_review_resumed(study, rater)
    if open_review is not None:
        return open_review
    locked = Study.objects.select_for_update(no_key=True).get(pk=study.pk)
    open_review = _open_review_resumed(locked, rater)  # a claim of the same rater held the lock before us
    if open_review is not None:
        return open_review
    reviews_expire(study=locked)
    conversation = reviewable_conversations(study=locked, rater=rater).first()
    if conversation is None:
        raise ActionRefused("Nothing left to review in this study. Thank you!", status=409)
    Participant.objects.get_or_create(study=locked, user=rater)  # where a reviewer is flagged, excluded, paid
    return ReviewAssignment.objects.create(conversation=conversation, rater=rater, last_activity_at=timezone.now())


def _open_review_resumed(study: Study, rater: User) -> ReviewAssignment | None:
    """The rater's open review in the study with its activity stamped now (a conditional UPDATE: one expired
    at this very moment is not resumed), or None."""
    review = ReviewAssignment.objects.filter(
        rater=rater, conversation__study=study, status=ReviewAssignment.Status.OPEN
    ).first()
    if review is None:
        return None
    now = timezone.now()
    if not ReviewAssignment.objects.filter(pk=review.pk, status=ReviewAssignment.Status.OPEN).update(
        last_activity_at=now
    ):
        return None
    review.last_activity_at = now
    return review


def reviews_expire(now: datetime | None = None, *, study: Study | None = None) -> int:
    """Expire open review assignments idle for their study's `assignment_timeout_minutes` (0: never), counted
    from the claim or the reviewer's last tag or vote: status EXPIRED, the conversation goes back to the pool
    (the reviewer does not get it again). All studies (`labeling.tasks.expire_reviews_task`, every minute) or
    one (`review_claim`, lazily, under the study's lock). As `annotate.services.conversations_expire`: the sweep
    skips rows a transaction in progress holds, a claim waits for them. Returns how many."""
    now = now or timezone.now()
    expired = 0
    for minutes, study_ids in studies_by_timeout(study).items():
        cutoff = now - timedelta(minutes=minutes)
        idle = Q(last_activity_at__lt=cutoff) | Q(last_activity_at__isnull=True, created_at__lt=cutoff)
        with transaction.atomic():
            rows = ReviewAssignment.objects.filter(
                idle, conversation__study_id__in=study_ids, status=ReviewAssignment.Status.OPEN
            )
            locked = rows.select_for_update(skip_locked=study is None, of=("self",)).order_by("pk")
            ids = list(locked.values_list("pk", flat=True))
            if ids:
                expired += ReviewAssignment.objects.filter(pk__in=ids, status=ReviewAssignment.Status.OPEN).update(
                    status=ReviewAssignment.Status.EXPIRED
                )
    return expired


@transaction.atomic
def review_finish(*, rater: User, assignment_id: int) -> ReviewAssignment:
    """Mark the rater's review as done. Finishing twice is harmless; anyone else's review is a 404, an
    expired one a 409."""
    assignment = (
        ReviewAssignment.objects.select_for_update(of=("self",))
        .select_related("conversation__study")
        .filter(pk=assignment_id, rater=rater)
        .first()
    )
    if assignment is None:
        raise ActionRefused("No such review.", status=404)
    if assignment.status == ReviewAssignment.Status.EXPIRED:
        raise ActionRefused(review_expired_message(assignment.conversation.study), status=409)
    if assignment.status != ReviewAssignment.Status.DONE:
        assignment.status = ReviewAssignment.Status.DONE
        assignment.done_at = assignment.last_activity_at = timezone.now()
        assignment.save(update_fields=["status", "done_at", "last_activity_at"])
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
    if assignment.status == ReviewAssignment.Status.EXPIRED:
        raise ActionRefused(review_expired_message(assignment.conversation.study), status=409)
    if assignment.status != ReviewAssignment.Status.OPEN:
        raise ActionRefused("This review is finished: its votes can no longer change.", status=409)
    ReviewAssignment.objects.filter(pk=assignment.pk).update(last_activity_at=timezone.now())
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


# --- gold items: qualification before work ---------------------------------------------------

# An answer to a gold item passes when its labels are close enough to the expected ones: Jaccard
# similarity |given ∩ expected| / |given ∪ expected| ≥ this (an empty answer to an item expecting no
# label is 1.0). One missing or one extra label on a one- or two-label item still passes; a wrong label
# instead of the right one fails. The qualification score is the share of items passed.
GOLD_PASS_JACCARD = 0.5
QUALIFICATION_FAILED = "failed the qualification"


def gold_score(given: Iterable[int], expected: Iterable[int]) -> tuple[float, bool]:
    """(Jaccard similarity of the label ids given and expected, whether that passes)."""
    score = agreement.jaccard(given, expected)
    return score, score >= GOLD_PASS_JACCARD


def _gold_labels(study: Study, label_ids: Iterable[int | str]) -> list[Label]:
    """The labels a rater gave a gold reply: ids of the study's labels that apply to replies."""
    allowed = {label.pk: label for label in labels_for(study, fresh=True) if label.applies_to(Turn.Role.ASSISTANT)}
    found: dict[int, Label] = {}
    for value in label_ids:
        if isinstance(value, str) and not is_id(value):
            raise ActionRefused(f"Unknown label {value[:40]!r} for this study.")
        label = allowed.get(int(value))
        if label is None:
            raise ActionRefused(f"Unknown label {str(value)[:40]!r} for this study.")
        found[label.pk] = label
    return list(found.values())


def _gold_item_locked(*, study: Study, rater: User, item_id: int, kind: str) -> tuple[GoldItem, Participant]:
    """The study's gold item of this kind (404 otherwise) and the rater's Participant, locked: one rater's
    answers are scored in turn."""
    item = GoldItem.objects.filter(pk=item_id, study=study, kind=kind).first()
    if item is None:
        raise ActionRefused(f"No such {GoldItem.Kind(kind).label.lower()} item in this study.", status=404)
    participant, _ = Participant.objects.get_or_create(study=study, user=rater)
    return item, Participant.objects.select_for_update().get(pk=participant.pk)


def _gold_answer_create(*, study: Study, rater: User, item: GoldItem, label_ids: Iterable[int | str]) -> GoldAnswer:
    """Score and store the rater's labels on a gold item; a pass counts towards their bonus."""
    labels = _gold_labels(study, label_ids)
    score, passed = gold_score({label.pk for label in labels}, item.expected_labels.values_list("pk", flat=True))
    answer = GoldAnswer.objects.create(item=item, rater=rater, score=score, passed=passed)
    answer.labels.set(labels)
    if passed:
        gold_passed_add(study=study, rater=rater)
    return answer


@transaction.atomic
def qualification_answer(*, study: Study, rater: User, item_id: int, label_ids: Iterable[int | str]) -> GoldAnswer:
    """Score the rater's labels on one qualification item; once every item is answered, the rater
    qualifies or fails (`qualification_finish`). The first answer to an item stands: a resend returns it.
    """
    item, participant = _gold_item_locked(study=study, rater=rater, item_id=item_id, kind=GoldItem.Kind.QUALIFICATION)
    existing = GoldAnswer.objects.filter(item=item, rater=rater).first()
    if existing is not None:
        return existing
    if participant.qualified_at is not None:
        raise ActionRefused("You have already qualified for this study.", status=409)
    if participant.status == Participant.Status.SCREENED_OUT:
        raise ActionRefused("Your qualification for this study is over.", status=403)
    answer = _gold_answer_create(study=study, rater=rater, item=item, label_ids=label_ids)
    qualification_finish(study=study, rater=rater)
    return answer


@transaction.atomic
def qualification_reset(participant: Participant) -> Participant:
    """Let the rater take the study's qualification again (admin's "Let them retake the qualification"):
    their answers to its items go (the passed ones leave `gold_passed`), score and pass are cleared, and one
    screened out for failing it is active again (a panel participant opens the study link again to go on).
    Refused (409) for one who completed, returned, or was screened out for another reason."""
    locked = Participant.objects.select_for_update().get(pk=participant.pk)
    failed_it = locked.status == Participant.Status.SCREENED_OUT and locked.screenout_reason == QUALIFICATION_FAILED
    if locked.status != Participant.Status.ACTIVE and not failed_it:
        raise ActionRefused(
            f"{locked}: has left the study ({locked.get_status_display()}), not by failing the qualification.", 409
        )
    answers = GoldAnswer.objects.filter(
        item__study_id=locked.study_id, item__kind=GoldItem.Kind.QUALIFICATION, rater_id=locked.user_id
    )
    passed = answers.filter(passed=True).count()
    answers.delete()
    locked.gold_passed = max(locked.gold_passed - passed, 0)
    locked.qualification_score = locked.qualified_at = None
    if failed_it:
        locked.status, locked.screenout_reason, locked.completed_at = Participant.Status.ACTIVE, "", None
    locked.save()
    return locked


@transaction.atomic
def attention_answer(*, study: Study, rater: User, item_id: int, label_ids: Iterable[int | str]) -> GoldAnswer:
    """Score the reviewer's labels on an attention gold item met between reviews (`selectors.attention_item_due`).
    The first answer stands: a resend returns it. An excluded rater is refused (403)."""
    item, participant = _gold_item_locked(study=study, rater=rater, item_id=item_id, kind=GoldItem.Kind.ATTENTION)
    existing = GoldAnswer.objects.filter(item=item, rater=rater).first()
    if existing is not None:
        return existing
    if participant.excluded:
        raise ActionRefused("Your work in this study has ended: there is nothing more to review.", status=403)
    return _gold_answer_create(study=study, rater=rater, item=item, label_ids=label_ids)


def qualification_finish(*, study: Study, rater: User) -> Participant | None:
    """Once the rater answered every qualification item: their score (the share of items passed) and
    `qualified_at` when it reaches `study.qualification_pass_mark`; else they are screened out (a panel
    participant gets the panel's screen-out code). Returns the participant, or None while items remain."""
    state = qualification_state(study, rater)
    if state.next_item is not None or state.participant is None or state.qualified:
        return None if state.next_item is not None else state.participant
    participant = state.participant
    participant.qualification_score = state.passed / len(state.items)
    if participant.qualification_score >= study.qualification_pass_mark - 1e-9:
        participant.qualified_at = timezone.now()
        participant.save(update_fields=["qualification_score", "qualified_at"])
        return participant
    participant.save(update_fields=["qualification_score"])
    if participant.status != Participant.Status.ACTIVE:
        return participant  # already left the study: nothing to screen out
    # Panel participants leave with the study's screen-out code; raters made by hand are screened out alike.
    return participant_screen_out(participant, QUALIFICATION_FAILED)


# --- gold items: import ----------------------------------------------------------------------

GOLD_FIELDS = ("id", "external_id", "kind", "context", "reply", "labels", "explanation", "order")
MAX_GOLD_ITEMS = 2000


def gold_rows_read(*, name: str, data: bytes) -> list[Any]:
    """The items of a gold file: YAML (a list of items, or a mapping with `items`) or JSONL (one item a line)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ActionRefused("The file is not UTF-8 text.") from None
    if name.lower().endswith((".jsonl", ".json")):
        rows = [parse_json(line, what=f"Line {n}") for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    else:
        document = parse_yaml(text)
        found = document.get("items") if isinstance(document, dict) else document
        if not isinstance(found, list):
            raise ActionRefused("A gold file is a list of items (or a mapping with a list of 'items').")
        rows = found
    check_structure(rows, what="The gold file", max_depth=4)
    return rows


def _gold_row(number: int, raw: object, labels: dict[str, Label]) -> tuple[str, dict[str, Any], list[Label]]:
    """One item of a gold file, checked: (external id, fields, expected labels)."""
    where = f"Item {number}"
    if not isinstance(raw, dict):
        raise ActionRefused(f"{where}: an item is a mapping of fields, not {_yaml_type(raw)}.")
    unknown = {str(k) for k in raw} - set(GOLD_FIELDS)
    if unknown:
        raise ActionRefused(f"{where}: unknown fields {', '.join(sorted(unknown))}.")
    external_id = _text(where, "id", str(raw.get("external_id") or raw.get("id") or ""), limit=100, one_line=True)
    kind = raw.get("kind", GoldItem.Kind.QUALIFICATION)
    if kind not in GoldItem.Kind.values:
        raise ActionRefused(f"{where}: kind must be one of {', '.join(GoldItem.Kind.values)}.")
    fields: dict[str, Any] = {"kind": kind}
    for name in ("context", "reply"):
        fields[name] = _text(where, name, raw.get(name) or "")
        if not fields[name]:
            raise ActionRefused(f"{where}: '{name}' is required.")
    fields["explanation"] = _text(where, "explanation", raw.get("explanation") or "")
    order = raw.get("order", number)
    if not isinstance(order, int) or isinstance(order, bool) or not 0 <= order <= 32767:
        raise ActionRefused(f"{where}: 'order' must be a whole number from 0 to 32767.")
    fields["order"] = order
    names = raw.get("labels") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ActionRefused(f"{where}: 'labels' must be a list of label names.")
    missing = sorted(n for n in names if n not in labels)
    if missing:
        raise ActionRefused(f"{where}: no reply label of this study's taxonomy is called {', '.join(missing)}.")
    return external_id, fields, [labels[n] for n in names]


def gold_items_import(*, study: Study, rows: list[Any]) -> tuple[int, int]:
    """Create or update the study's gold items from parsed rows (`gold_rows_read`): each needs `context`,
    `reply` and `labels` (names of the study's labels that apply to replies; [] expects none); `id` makes
    re-imports update. Everything is checked before anything is written. Returns (created, updated)."""
    if len(rows) > MAX_GOLD_ITEMS:
        raise ActionRefused(f"A gold file has at most {MAX_GOLD_ITEMS} items; this one has {len(rows)}.")
    labels = {label.name: label for label in labels_for(study, fresh=True) if label.applies_to(Turn.Role.ASSISTANT)}
    parsed = [_gold_row(number, raw, labels) for number, raw in enumerate(rows, start=1)]
    ids = [external_id for external_id, _, _ in parsed if external_id]
    if len(ids) != len(set(ids)):
        raise ActionRefused("An item id is used twice in the file.")
    created = updated = 0
    with transaction.atomic():
        for external_id, fields, expected in parsed:
            if external_id:
                item, was_created = GoldItem.objects.update_or_create(
                    study=study, external_id=external_id, defaults=fields
                )
            else:
                item, was_created = GoldItem.objects.create(study=study, **fields), True
            item.expected_labels.set(expected)
            created += was_created
            updated += not was_created
    return created, updated


# --- dashboard snapshots ---------------------------------------------------------------------------
# The dashboard page renders a stored snapshot of the figures (labeling.dashboard); a Celery task computes it.

DASHBOARD_REFRESH_TASK = "labeling.tasks.dashboard_refresh_task"
DASHBOARD_REFRESH_DEDUPE = timedelta(seconds=5)  # requests closer than this send one task
DASHBOARD_REFRESH_LOST = timedelta(minutes=5)  # a request not served by then is sent again (a lost task)


def dashboard_refresh(*, study_id: int, include_excluded: bool) -> DashboardSnapshot | None:
    """Compute the study's dashboard figures and store them as its snapshot; None if the study is gone.

    `computed_at` is when the reads began; a computation that began before the stored one does not
    overwrite it (two refreshes running at once leave the newer figures)."""
    study = Study.objects.filter(pk=study_id).first()
    if study is None:
        return None
    started = timezone.now()
    data = dashboard_to_json(study_dashboard(study=study, include_excluded=include_excluded))
    DashboardSnapshot.objects.get_or_create(study=study, include_excluded=include_excluded)
    DashboardSnapshot.objects.filter(study=study, include_excluded=include_excluded).filter(
        Q(computed_at__isnull=True) | Q(computed_at__lt=started)
    ).update(computed_at=started, data=data)
    return DashboardSnapshot.objects.get(study=study, include_excluded=include_excluded)


def dashboard_refresh_request(*, study: Study, include_excluded: bool, now: datetime | None = None) -> bool:
    """Ask the worker for fresh figures (`dashboard_refresh_task`, sent after commit). A request is claimed by
    a conditional UPDATE: none is sent within DASHBOARD_REFRESH_DEDUPE of the last one, nor while the last one
    is still unserved (no computation began after it) unless it is older than DASHBOARD_REFRESH_LOST. True
    when a task was sent."""
    now = now or timezone.now()
    DashboardSnapshot.objects.get_or_create(study=study, include_excluded=include_excluded)
    served = Q(computed_at__isnull=False, computed_at__gte=F("refresh_requested_at"))
    claimed = (
        DashboardSnapshot.objects.filter(study=study, include_excluded=include_excluded)
        .filter(
            Q(refresh_requested_at__isnull=True)
            | Q(refresh_requested_at__lt=now - DASHBOARD_REFRESH_LOST)
            | (served & Q(refresh_requested_at__lt=now - DASHBOARD_REFRESH_DEDUPE))
        )
        .update(refresh_requested_at=now)
    )
    if claimed:
        transaction.on_commit(lambda: task_send(DASHBOARD_REFRESH_TASK, study.pk, include_excluded))
    return bool(claimed)


# --- the demo ---------------------------------------------------------------------------------


@transaction.atomic
def demo_setup(*, reset: bool = False) -> dict[str, str | None]:
    """The demo (`annotate.services.demo_setup`: created when missing, put back as shipped with `reset`) and the
    default taxonomy its study tags with (only ever created when missing: every study without one shares it)."""
    default_taxonomy()
    return annotate_demo_setup(reset=reset)
