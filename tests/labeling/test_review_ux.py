"""The review pages: why there is nothing to review, blind by default, label buttons folded but where one works."""

from __future__ import annotations

import re
import uuid

import pytest
from django.urls import reverse

from annotate.models import Conversation, Study
from labeling import services as labeling
from labeling.models import ReviewAssignment
from tests.helpers import finished_conversation

pytestmark = pytest.mark.django_db


def nothing_to_review(client, user) -> str:
    client.force_login(user)
    html = client.get(reverse("labeling:review_home")).content.decode()
    assert 'id="nothing-to-review"' in html
    return " ".join(html.split('id="nothing-to-review"', 1)[1].split("</div>", 1)[0].split())


def test_nothing_to_review_says_why(make_study, make_user, client):
    study = make_study(scenarios=4, overlap=1, review_overlap=1)
    me = make_user()
    assert "No conversation has been finished yet" in nothing_to_review(client, me)

    # Only my own conversation is finished
    finished_conversation(study, me)
    assert "1 finished conversation is your own: nobody reviews their own conversations." in nothing_to_review(
        client, me
    )

    # Another's is finished too, and I reviewed it
    other = finished_conversation(study, make_user())
    assignment = labeling.review_claim(rater=me, study=study)
    labeling.review_finish(rater=me, assignment_id=assignment.pk)
    reasons = nothing_to_review(client, me)
    assert "You have already reviewed 1 conversation" in reasons and "is your own" in reasons

    # A third has all the reviewers the study asks for
    third = finished_conversation(study, make_user())
    ReviewAssignment.objects.create(conversation=third, rater=make_user())
    assert "1 conversation has all the reviewers the study asks for." in nothing_to_review(client, me)
    assert other.pk != third.pk


def test_no_study_with_a_review_pass(make_study, make_user, client):
    make_study(review_overlap=0)
    Study.objects.filter(review_overlap__gt=0).update(is_active=False)
    assert "No open study has a review pass." in nothing_to_review(client, make_user())


@pytest.fixture
def review(make_study, make_user):
    """A finished two-message conversation (reply A chosen each time) under review by `reviewer`."""

    def make(**study_fields):
        study = make_study(scenarios=2, overlap=1, review_overlap=1, **study_fields)
        conversation = finished_conversation(study, make_user())
        reviewer = make_user()
        assignment = labeling.review_claim(rater=reviewer, study=study)
        return conversation, reviewer, assignment

    return make


def page(client, reviewer, assignment) -> str:
    client.force_login(reviewer)
    return client.get(reverse("labeling:review_detail", args=[assignment.pk])).content.decode()


@pytest.mark.parametrize("all_branches", [False, True])
def test_reviewers_do_not_see_the_original_choice_by_default(review, client, all_branches):
    conversation, reviewer, assignment = review(review_all_branches=all_branches)
    html = page(client, reviewer, assignment)
    assert "continued" not in html.lower().replace("not continued", "")  # no badge
    assert "not continued" not in html and 'class="msg assistant branch"' not in html
    speakers = re.findall(r'<span class="speaker">([^<]*)</span>', html)
    if not all_branches:  # the lived path alone: one reply per message, its slot letter would say which
        assert [s for s in speakers if s.startswith("Reply")] == ["Reply", "Reply"]
    # and the vote form's answer (htmx) is blind too
    parent = conversation.turns.filter(role="user").order_by("depth").first()
    answer = client.post(
        reverse("labeling:review_vote", args=[assignment.pk]),
        {"parent": parent.pk, "choice": "tie", "idempotency_key": str(uuid.uuid4())},
        HTTP_HX_REQUEST="true",
    )
    assert answer.status_code == 200 and "Your vote: tie" in answer.content.decode()
    assert "continued" not in answer.content.decode()


def test_a_study_may_show_reviewers_the_original_choice(review, client):
    _, reviewer, assignment = review(reviewers_see_choice=True, review_all_branches=True)
    html = page(client, reviewer, assignment)
    assert html.count('<span class="badge">continued</span>') == 2  # one per vote form
    assert html.count("· not continued") == 2  # reply B of each message
    assert "Reply A" in html


def test_label_buttons_are_folded_but_for_the_first_untagged_turn(review, client):
    conversation, reviewer, assignment = review()
    first_user = conversation.turns.filter(role="user").order_by("depth").first()
    labeling.tag_add(rater=reviewer, turn_id=first_user.pk, label="clarification", task="review")
    html = page(client, reviewer, assignment)
    chunks = html.split('<div class="tag-bar"')[1:]
    folded = ['<details class="tag-more">' in chunk.split('<div class="tag-bar"', 1)[0] for chunk in chunks]
    # four turns (user, reply, user, reply): the first is tagged, so the reply after it is where work goes on
    assert folded == [True, False, True, True]
    assert conversation.status == Conversation.Status.COMPLETED
