"""Review votes on PostgreSQL: a reviewer's own preference at each branch point of the conversation they review."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.urls import reverse

from annotate import selectors as annotate_selectors
from annotate.models import Comparison, Conversation, Turn
from core.errors import ActionRefused
from labeling import services as labeling
from labeling.models import ReviewAssignment
from tests.helpers import choose, finish_candidates, finished_conversation

pytestmark = pytest.mark.django_db


@pytest.fixture
def study(make_study):
    return make_study(scenarios=4, overlap=1, review_overlap=2)


@pytest.fixture
def reviewed(study, make_user) -> tuple[Conversation, ReviewAssignment, Turn, list[Turn]]:
    """A finished conversation (reply A chosen at each message), claimed by a reviewer: the first user turn
    and its two replies."""
    conversation = finished_conversation(study, make_user())
    assignment = labeling.review_claim(rater=make_user(), study=study)
    user_turn = conversation.turns.get(text="Plan a party")
    return conversation, assignment, user_turn, annotate_selectors.candidates_of(user_turn)


def vote(assignment: ReviewAssignment, parent: Turn, key: uuid.UUID | None = None, **fields: Any) -> Comparison:
    return labeling.review_vote(
        rater=assignment.rater,
        assignment_id=assignment.pk,
        parent_id=parent.pk,
        idempotency_key=key or uuid.uuid4(),
        **fields,
    )


def test_reviewer_vote_is_stored_beside_the_live_vote_and_changes_nothing(reviewed):
    conversation, assignment, user_turn, (a, b) = reviewed
    head = conversation.head_id

    comparison = vote(assignment, user_turn, choice="candidate", chosen_id=b.pk, strength="slight", reason=" why ")

    assert (comparison.task, comparison.rater_id, comparison.conversation_id) == ("review", assignment.rater_id,
                                                                                  conversation.pk)  # fmt: skip
    assert (comparison.chosen_id, comparison.strength, comparison.reason) == (b.pk, "slight", "why")
    assert comparison.continued_from_id is None and comparison.decision_ms is None
    live = Comparison.objects.get(parent=user_turn, task=Comparison.Task.LIVE)
    assert live.chosen_id == a.pk and user_turn.comparisons.count() == 2
    conversation.refresh_from_db()
    assert conversation.head_id == head and not Turn.objects.filter(is_rewrite=True).exists()


def test_resend_with_the_same_key_records_one_vote(reviewed):
    _, assignment, user_turn, (a, _) = reviewed
    key = uuid.uuid4()
    first = vote(assignment, user_turn, key, choice="candidate", chosen_id=a.pk)
    again = vote(assignment, user_turn, key, choice="candidate", chosen_id=a.pk)
    assert first.pk == again.pk
    assert Comparison.objects.filter(task=Comparison.Task.REVIEW).count() == 1


def test_a_second_vote_on_the_same_message_replaces_the_first(reviewed):
    _, assignment, user_turn, (a, _) = reviewed
    first = vote(assignment, user_turn, choice="candidate", chosen_id=a.pk, strength="slight")
    second = vote(assignment, user_turn, choice="tie", strength="slight")
    assert second.pk == first.pk
    stored = Comparison.objects.get(parent=user_turn, rater=assignment.rater)
    assert (stored.choice, stored.chosen_id, stored.strength) == ("tie", None, "")


def test_key_of_another_vote_is_refused(reviewed):
    conversation, assignment, user_turn, (a, _) = reviewed
    live = Comparison.objects.get(parent=user_turn)
    with pytest.raises(ActionRefused) as refused:
        vote(assignment, user_turn, live.idempotency_key, choice="tie")
    assert refused.value.status == 409


def test_another_raters_review_is_404_and_a_finished_one_409(reviewed, make_user):
    _, assignment, user_turn, _ = reviewed
    with pytest.raises(ActionRefused) as refused:
        labeling.review_vote(
            rater=make_user(), assignment_id=assignment.pk, parent_id=user_turn.pk, choice="tie",
            idempotency_key=uuid.uuid4(),
        )  # fmt: skip
    assert refused.value.status == 404
    labeling.review_finish(rater=assignment.rater, assignment_id=assignment.pk)
    with pytest.raises(ActionRefused, match="finished") as refused:
        vote(assignment, user_turn, choice="tie")
    assert refused.value.status == 409
    assert not Comparison.objects.filter(task=Comparison.Task.REVIEW).exists()


def test_only_user_turns_of_the_reviewed_conversation_take_a_vote(reviewed, study, make_user):
    _, assignment, user_turn, (a, _) = reviewed
    with pytest.raises(ActionRefused, match="reply") as refused:
        vote(assignment, a, choice="tie")
    assert refused.value.status == 400
    foreign = finished_conversation(study, make_user()).turns.get(text="Plan a party")
    with pytest.raises(ActionRefused) as refused:
        vote(assignment, foreign, choice="tie")
    assert refused.value.status == 404
    with pytest.raises(ActionRefused, match="Pick one of the replies"):
        vote(assignment, user_turn, choice="candidate", chosen_id=foreign.pk)
    with pytest.raises(ActionRefused, match="Unknown choice"):
        vote(assignment, user_turn, choice="best")
    assert not Comparison.objects.filter(task=Comparison.Task.REVIEW).exists()


def test_a_message_with_one_finished_reply_has_nothing_to_compare(reviewed):
    _, assignment, user_turn, (_, b) = reviewed
    Turn.objects.filter(pk=b.pk).update(status=Turn.Status.FAILED)
    with pytest.raises(ActionRefused, match="fewer than two") as refused:
        vote(assignment, user_turn, choice="tie")
    assert refused.value.status == 400


def test_live_session_still_takes_one_vote_per_user_turn(make_conversation):
    conversation = make_conversation()
    from annotate import services

    user_turn = services.message_send(conversation=conversation, text="Hi")
    a, b = finish_candidates(user_turn)
    choose(conversation, user_turn.pk, choice="candidate", chosen_id=a.pk)
    with pytest.raises(ActionRefused, match="already chose") as refused:
        choose(conversation, user_turn.pk, choice="candidate", chosen_id=b.pk)
    assert refused.value.status == 409
    assert Comparison.objects.get(parent=user_turn).task == Comparison.Task.LIVE


def test_review_page_shows_every_reply_in_the_vote_form_and_htmx_swaps_it(client, reviewed):
    conversation, assignment, user_turn, (a, b) = reviewed
    client.force_login(assignment.rater)
    page = client.get(reverse("labeling:review_detail", args=[assignment.pk])).content.decode()
    assert f'id="review-vote-{user_turn.pk}"' in page and "answer 0 B" in page
    assert page.count('class="review-vote"') == 2  # one per user turn

    url = reverse("labeling:review_vote", args=[assignment.pk])
    response = client.post(
        url, {"parent": user_turn.pk, "choice": b.pk, "strength": "slight", "idempotency_key": str(uuid.uuid4())},
        headers={"HX-Request": "true"},
    )  # fmt: skip

    assert response.status_code == 200
    fragment = response.content.decode()
    assert fragment.lstrip().startswith(f'<form class="review-vote" id="review-vote-{user_turn.pk}"')
    assert "Your vote: reply B (slight)" in fragment
    assert Comparison.objects.get(parent=user_turn, rater=assignment.rater).chosen_id == b.pk
    # A refusal comes back in the same form, with its 4xx status
    refused = client.post(url, {"parent": user_turn.pk, "choice": "best", "idempotency_key": str(uuid.uuid4())},
                          headers={"HX-Request": "true"})  # fmt: skip
    assert refused.status_code == 400 and "Unknown choice" in refused.content.decode()
    assert f'id="review-vote-{user_turn.pk}"' in refused.content.decode()


@pytest.mark.parametrize("choice", ["²", "9" * 30, "tie\x00"])
def test_malformed_choice_is_refused_not_a_500(client, reviewed, choice):
    _, assignment, user_turn, _ = reviewed
    client.force_login(assignment.rater)
    data = {"parent": user_turn.pk, "choice": choice, "idempotency_key": str(uuid.uuid4())}
    response = client.post(reverse("labeling:review_vote", args=[assignment.pk]), data, headers={"HX-Request": "true"})
    assert response.status_code == 400
    assert not Comparison.objects.filter(rater=assignment.rater).exists()


def test_vote_view_without_htmx_redirects_and_refuses_others(client, reviewed, make_user):
    _, assignment, user_turn, _ = reviewed
    url = reverse("labeling:review_vote", args=[assignment.pk])
    data = {"parent": user_turn.pk, "choice": "tie", "idempotency_key": str(uuid.uuid4())}
    client.force_login(make_user())
    assert client.post(url, data).status_code == 404
    assert client.post(url, data, headers={"HX-Request": "true"})["HX-Retarget"] == "#errors"
    client.force_login(assignment.rater)
    response = client.post(url, data)
    assert response.status_code == 302
    assert (
        response["Location"] == reverse("labeling:review_detail", args=[assignment.pk]) + f"#review-vote-{user_turn.pk}"
    )
    assert client.get(url).status_code == 405
    assert Comparison.objects.get(parent=user_turn, rater=assignment.rater).choice == "tie"
