"""Review claims under real concurrency (PostgreSQL, many threads), and expiry of idle review assignments.
The rules are in docs/assignment.md."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import timedelta

import pytest
from django.db.models import F
from django.urls import reverse
from django.utils import timezone

from annotate import services
from annotate.models import Conversation, Turn
from core.errors import ActionRefused
from labeling import services as labeling
from labeling.models import ReviewAssignment, Tag
from labeling.tasks import expire_reviews_task
from tests.concurrency import in_parallel
from tests.helpers import finished_conversation

OPEN, DONE, EXPIRED = ReviewAssignment.Status.OPEN, ReviewAssignment.Status.DONE, ReviewAssignment.Status.EXPIRED


def _idle(review: ReviewAssignment, minutes: float) -> None:
    ReviewAssignment.objects.filter(pk=review.pk).update(last_activity_at=timezone.now() - timedelta(minutes=minutes))


def _reviews_per_conversation(study, statuses=(OPEN, DONE)) -> Counter[int]:
    rows = ReviewAssignment.objects.filter(conversation__study=study, status__in=statuses)
    return Counter(rows.values_list("conversation_id", flat=True))


def test_reviewers_claiming_at_once_never_over_assign_nor_review_their_own(transactional_db, make_study, make_user):
    """Eight raters (four of them wrote the conversations) claim, finish and claim again until nothing is
    left, all at once, with review_overlap 2: every conversation ends with exactly 2 reviews, none by its
    own rater, nobody twice on one, and refusals are clean 409s."""
    study = make_study(scenarios=4, overlap=1, review_overlap=2)
    raters = [make_user() for _ in range(8)]
    for writer in raters[:4]:
        finished_conversation(study, writer)

    def work(i: int) -> int:
        finished = 0
        while True:
            try:
                review = labeling.review_claim(rater=raters[i], study=study)
            except ActionRefused as exc:
                assert exc.status == 409 and "Nothing left to review" in exc.message
                return finished
            labeling.review_finish(rater=raters[i], assignment_id=review.pk)
            finished += 1

    outcomes = in_parallel(8, work)

    assert [o.error for o in outcomes] == [None] * 8
    assert sum(o.value for o in outcomes) == 8
    conversations = Conversation.objects.filter(study=study)
    assert _reviews_per_conversation(study, statuses=(DONE,)) == {c.pk: 2 for c in conversations}
    assert not ReviewAssignment.objects.filter(conversation__rater=F("rater")).exists()  # never their own
    pairs = Counter(ReviewAssignment.objects.values_list("conversation_id", "rater_id"))
    assert max(pairs.values()) == 1


def test_one_reviewer_claiming_eight_times_at_once_gets_one_open_review(transactional_db, make_study, make_user):
    study = make_study(scenarios=3, overlap=1, review_overlap=3)
    for _ in range(3):
        finished_conversation(study, make_user())
    reviewer = make_user()

    outcomes = in_parallel(8, lambda _: labeling.review_claim(rater=reviewer, study=study).pk)

    assert [o.error for o in outcomes] == [None] * 8
    assert len({o.value for o in outcomes}) == 1
    assert ReviewAssignment.objects.filter(rater=reviewer).count() == 1


def test_many_reviewers_racing_for_one_conversation_get_k_places(transactional_db, make_study, make_user):
    study = make_study(scenarios=1, overlap=1, review_overlap=2)
    finished_conversation(study, make_user())
    reviewers = [make_user() for _ in range(10)]

    outcomes = in_parallel(10, lambda i: labeling.review_claim(rater=reviewers[i], study=study).pk)

    assert sum(o.error is None for o in outcomes) == 2
    assert all(isinstance(o.error, ActionRefused) and o.error.status == 409 for o in outcomes if o.error)
    assert ReviewAssignment.objects.count() == 2


@pytest.mark.django_db
def test_an_idle_review_expires_and_its_conversation_goes_to_the_next_reviewer(make_study, make_user, client):
    study = make_study(scenarios=2, overlap=1, review_overlap=1, assignment_timeout_minutes=20)
    conversation = finished_conversation(study, make_user())
    slow, other, next_one = make_user(), make_user(), make_user()
    review = labeling.review_claim(rater=slow, study=study)
    with pytest.raises(ActionRefused, match="Nothing left to review"):
        labeling.review_claim(rater=other, study=study)
    _idle(review, 21)

    assert labeling.reviews_expire() == 1
    assert labeling.reviews_expire() == 0

    review.refresh_from_db()
    assert review.status == EXPIRED
    assert labeling.review_claim(rater=next_one, study=study).conversation_id == conversation.pk
    # The slow reviewer is told, and never gets that conversation back.
    turn = Turn.objects.filter(conversation=conversation, role=Turn.Role.USER).first()
    with pytest.raises(ActionRefused, match="This review has expired") as refused:
        labeling.tag_add(rater=slow, turn_id=turn.pk, label="acknowledgment", task=Tag.Task.REVIEW)
    assert refused.value.status == 409
    with pytest.raises(ActionRefused, match="This review has expired"):
        labeling.review_finish(rater=slow, assignment_id=review.pk)
    with pytest.raises(ActionRefused, match="This review has expired"):
        labeling.review_vote(
            rater=slow, assignment_id=review.pk, parent_id=turn.pk, choice="tie", idempotency_key=uuid.uuid4()
        )
    client.force_login(slow)
    page = client.get(reverse("labeling:review_detail", args=[review.pk])).content.decode()
    assert "This review has expired" in page and "20 minutes" in page
    with pytest.raises(ActionRefused, match="Nothing left to review"):
        labeling.review_claim(rater=slow, study=study)


@pytest.mark.django_db
def test_a_claim_expires_idle_reviews_itself_and_activity_keeps_one_alive(make_study, make_user):
    study = make_study(scenarios=2, overlap=1, review_overlap=1, assignment_timeout_minutes=20)
    conversation = finished_conversation(study, make_user())
    reviewer = make_user()
    review = labeling.review_claim(rater=reviewer, study=study)
    assert review.last_activity_at is not None
    turn = Turn.objects.filter(conversation=conversation, role=Turn.Role.USER).first()
    _idle(review, 21)
    labeling.tag_add(rater=reviewer, turn_id=turn.pk, label="acknowledgment", task=Tag.Task.REVIEW)  # activity
    assert labeling.reviews_expire() == 0
    _idle(review, 21)

    claimed = labeling.review_claim(rater=make_user(), study=study)  # no sweep ran: the claim expires it

    assert claimed.conversation_id == conversation.pk
    assert ReviewAssignment.objects.get(pk=review.pk).status == EXPIRED


@pytest.mark.django_db
def test_live_tags_keep_the_conversation_alive(make_study, make_user):
    from tests.helpers import finish_candidates

    study = make_study(scenarios=1, assignment_timeout_minutes=10)
    rater = make_user()
    conversation = services.conversation_start(study=study, rater=rater)
    user_turn = services.message_send(conversation=conversation, text="hello there")
    finish_candidates(user_turn)
    Conversation.objects.filter(pk=conversation.pk).update(last_activity_at=timezone.now() - timedelta(minutes=11))

    tag = labeling.tag_add(rater=rater, turn_id=user_turn.pk, label="acknowledgment")

    assert services.conversations_expire() == 0
    Conversation.objects.filter(pk=conversation.pk).update(last_activity_at=timezone.now() - timedelta(minutes=11))
    labeling.tag_remove(rater=rater, tag_id=tag.pk)
    assert services.conversations_expire() == 0
    Conversation.objects.filter(pk=conversation.pk).update(last_activity_at=timezone.now() - timedelta(minutes=11))
    assert services.conversations_expire() == 1
    with pytest.raises(ActionRefused, match="This conversation has expired") as refused:
        labeling.tag_add(rater=rater, turn_id=user_turn.pk, label="acknowledgment")
    assert refused.value.status == 409


@pytest.mark.django_db
def test_the_review_sweep_is_a_task(make_study, make_user):
    study = make_study(scenarios=1, overlap=1, review_overlap=1, assignment_timeout_minutes=5)
    finished_conversation(study, make_user())
    _idle(labeling.review_claim(rater=make_user(), study=study), 6)

    assert expire_reviews_task.apply().get() == 1
