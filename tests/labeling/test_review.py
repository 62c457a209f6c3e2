"""The review pass on PostgreSQL: claiming finished conversations, the review page, finishing."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from annotate import services
from annotate.models import Conversation, Turn
from core.errors import ActionRefused
from labeling import services as labeling
from labeling.models import ReviewAssignment, Tag
from tests.helpers import finished_conversation

pytestmark = pytest.mark.django_db


@pytest.fixture
def study(make_study):
    return make_study(scenarios=4, overlap=1, review_overlap=2)


def test_claim_takes_the_least_reviewed_conversation_first(study, make_user):
    first, second = finished_conversation(study, make_user()), finished_conversation(study, make_user())
    Conversation.objects.filter(pk=second.pk).update(ended_at=timezone.now() - timedelta(hours=1))
    ReviewAssignment.objects.create(conversation=second, rater=make_user())
    # `second` ended earlier but already has a reviewer: `first` (no reviewer yet) goes first
    assert labeling.review_claim(rater=make_user(), study=study).conversation_id == first.pk
    # Both now have one reviewer: the earlier-ended conversation goes first
    assert labeling.review_claim(rater=make_user(), study=study).conversation_id == second.pk


def test_claim_returns_the_open_assignment_until_it_is_done(study, make_user):
    finished_conversation(study, make_user())
    finished_conversation(study, make_user())
    reviewer = make_user()
    claimed = labeling.review_claim(rater=reviewer, study=study)
    assert labeling.review_claim(rater=reviewer, study=study).pk == claimed.pk
    labeling.review_finish(rater=reviewer, assignment_id=claimed.pk)
    following = labeling.review_claim(rater=reviewer, study=study)
    assert following.pk != claimed.pk and following.conversation_id != claimed.conversation_id


def test_claim_respects_overlap_and_skips_own_active_and_reviewed_conversations(study, make_user):
    reviewer = make_user()
    finished_conversation(study, reviewer)  # their own: never theirs to review
    services.conversation_start(study=study, rater=make_user())  # still active
    full = finished_conversation(study, make_user())
    for _ in range(study.review_overlap):
        ReviewAssignment.objects.create(conversation=full, rater=make_user())
    with pytest.raises(ActionRefused, match="Nothing left to review") as refused:
        labeling.review_claim(rater=reviewer, study=study)
    assert refused.value.status == 409
    assert not ReviewAssignment.objects.filter(rater=reviewer).exists()


def test_a_conversation_is_reviewed_once_per_rater(study, make_user):
    finished_conversation(study, make_user())
    reviewer = make_user()
    assignment = labeling.review_claim(rater=reviewer, study=study)
    labeling.review_finish(rater=reviewer, assignment_id=assignment.pk)
    with pytest.raises(ActionRefused, match="Nothing left to review"):
        labeling.review_claim(rater=reviewer, study=study)


def test_finish_is_idempotent_and_others_get_404(study, make_user):
    finished_conversation(study, make_user())
    reviewer = make_user()
    assignment = labeling.review_claim(rater=reviewer, study=study)
    done = labeling.review_finish(rater=reviewer, assignment_id=assignment.pk)
    again = labeling.review_finish(rater=reviewer, assignment_id=assignment.pk)
    assert done.status == again.status == ReviewAssignment.Status.DONE and again.done_at == done.done_at
    with pytest.raises(ActionRefused) as refused:
        labeling.review_finish(rater=make_user(), assignment_id=assignment.pk)
    assert refused.value.status == 404


# --- views ---------------------------------------------------------------------------------


def test_home_next_detail_done_round_trip(client, study, make_user):
    conversation = finished_conversation(study, make_user())
    reviewer = make_user()
    client.force_login(reviewer)
    home = client.get(reverse("labeling:review_home"))
    assert home.status_code == 200 and study.name in home.content.decode()
    assert reverse("labeling:review_next", args=[study.slug]) in home.content.decode()

    response = client.post(reverse("labeling:review_next", args=[study.slug]))
    assignment = ReviewAssignment.objects.get(rater=reviewer)
    assert assignment.conversation_id == conversation.pk
    assert response.status_code == 302 and response["Location"] == reverse(
        "labeling:review_detail", args=[assignment.pk]
    )

    response = client.post(reverse("labeling:review_done", args=[assignment.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("labeling:review_home")
    assignment.refresh_from_db()
    assert assignment.status == ReviewAssignment.Status.DONE
    assert client.post(reverse("labeling:review_next", args=[study.slug])).status_code == 409


def test_a_closed_study_is_neither_listed_nor_claimable(client, study, make_user):
    finished_conversation(study, make_user())
    reviewer = make_user()
    study.is_active = False
    study.save(update_fields=["is_active"])
    with pytest.raises(ActionRefused, match="closed") as refused:
        labeling.review_claim(rater=reviewer, study=study)
    assert refused.value.status == 409
    client.force_login(reviewer)
    home = client.get(reverse("labeling:review_home")).content.decode()
    assert reverse("labeling:review_next", args=[study.slug]) not in home
    assert client.post(reverse("labeling:review_next", args=[study.slug])).status_code == 409
    assert not ReviewAssignment.objects.exists()


def test_home_page_links_to_the_review_pass(client, make_user):
    client.force_login(make_user())
    assert reverse("labeling:review_home") in client.get(reverse("annotate:home")).content.decode()


def test_detail_shows_the_lived_path_with_the_reviewers_own_review_tags(client, study, make_user):
    conversation = finished_conversation(study, make_user())
    reviewer, other = make_user(), make_user()
    assignment = labeling.review_claim(rater=reviewer, study=study)
    labeling.review_claim(rater=other, study=study)
    path = list(conversation.turns.filter(text__in=["Plan a party", "answer 0 A", "For ten kids", "answer 1 A"]))
    user_turn = next(t for t in path if t.text == "For ten kids")  # feedback reacts to a reply: not the first message
    mine = labeling.tag_add(rater=reviewer, turn_id=user_turn.pk, label="topic-shift", task=Tag.Task.REVIEW)
    labeling.tag_add(rater=other, turn_id=user_turn.pk, label="hedging", task=Tag.Task.REVIEW)
    client.force_login(reviewer)

    response = client.get(reverse("labeling:review_detail", args=[assignment.pk]))

    assert response.status_code == 200
    page = response.content.decode()
    for text in ("Plan a party", "answer 0 A", "For ten kids", "answer 1 A"):
        assert text in page
    rows = response.context["rows"]
    # the unchosen branch is not part of the lived path: only the vote form shows it, to compare with
    assert "answer 0 B" not in [row["turn"].text for row in rows] and page.count("answer 0 B") == 1
    assert [row["turn"].pk for row in rows] == [t.pk for t in sorted(path, key=lambda t: t.depth)]
    assert [t.pk for t in rows[2]["tags"]] == [mine.pk]  # only the reviewer's own, review task
    assert all(label.applies_to("user") for label in rows[2]["labels"])
    # the first message is offered no feedback signal (nothing before it to react to)
    assert rows[0]["labels"] and not any(label.kind == "feedback" for label in rows[0]["labels"])
    assert [t.pk for t in rows[2]["linkable"]] == [rows[0]["turn"].pk, rows[1]["turn"].pk]
    assert "labeling/_tag_bar.html" in [t.name for t in response.templates]


def test_detail_shows_every_branch_when_the_study_asks(client, study, make_user):
    study.review_all_branches = True
    study.save()
    conversation = finished_conversation(study, make_user(), texts=("Plan a party",))
    failed = Turn.objects.create(
        conversation=conversation,
        parent=conversation.turns.get(role=Turn.Role.USER),
        role=Turn.Role.ASSISTANT,
        depth=1,
        position=2,
        status=Turn.Status.FAILED,
        error="model fell over",
    )
    reviewer = make_user()
    assignment = labeling.review_claim(rater=reviewer, study=study)
    client.force_login(reviewer)
    response = client.get(reverse("labeling:review_detail", args=[assignment.pk]))
    page = response.content.decode()
    assert "answer 0 A" in page and "answer 0 B" in page and "This reply could not be generated." in page
    assert "model fell over" not in page  # the failure's detail is for staff (admin)
    rows = {row["turn"].pk: row for row in response.context["rows"]}
    assert not rows[failed.pk]["taggable"] and not rows[failed.pk]["on_path"]


def test_another_raters_review_is_404(client, study, make_user):
    finished_conversation(study, make_user())
    assignment = labeling.review_claim(rater=make_user(), study=study)
    client.force_login(make_user())
    assert client.get(reverse("labeling:review_detail", args=[assignment.pk])).status_code == 404
    assert client.post(reverse("labeling:review_done", args=[assignment.pk])).status_code == 404
    assignment.refresh_from_db()
    assert assignment.status == ReviewAssignment.Status.OPEN


def test_review_pages_need_login_and_post(client, study, make_user):
    assert client.get(reverse("labeling:review_home")).status_code == 302
    client.force_login(make_user())
    assert client.get(reverse("labeling:review_next", args=[study.slug])).status_code == 405


def test_reviewer_tags_through_the_tag_endpoint_and_sees_it_on_the_page(client, study, make_user):
    conversation = finished_conversation(study, make_user())
    reviewer = make_user()
    assignment = labeling.review_claim(rater=reviewer, study=study)
    reply = conversation.turns.get(text="answer 0 A")
    client.force_login(reviewer)
    url = reverse("labeling:tag_add") + f"?turn={reply.pk}&task=review"
    assert client.post(url, {"label": "over-response"}).status_code == 302

    response = client.get(reverse("labeling:review_detail", args=[assignment.pk]))

    row = next(row for row in response.context["rows"] if row["turn"].pk == reply.pk)
    assert [t.label.name for t in row["tags"]] == ["over-response"]
    assert Tag.objects.get(turn=reply).task == Tag.Task.REVIEW
    # Once the review is done, the turns can no longer be tagged
    labeling.review_finish(rater=reviewer, assignment_id=assignment.pk)
    assert client.post(url, {"label": "agreement"}).status_code == 404
    assert not any(row["taggable"] for row in client.get(response.request["PATH_INFO"]).context["rows"])
