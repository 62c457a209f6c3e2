"""Overload is graceful (issue 11, item 6), on PostgreSQL: while the shared generation queue is longer than a
study's `max_queued_turns`, a new conversation is refused at once ("busy, try again in N s", 503 with
Retry-After) and nothing is written, while active conversations go on; a panel participant refused as busy keeps
their place (never screened out or completed) and is told to try again."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotate import services
from annotate.models import Conversation, Participant, Study, Turn
from core.errors import ActionRefused
from tests.helpers import choose, finish_candidates

pytestmark = pytest.mark.django_db

PANEL = {
    "completion_url": "https://app.prolific.com/submissions/complete?cc={code}",
    "completion_code": "C0MPL3TE",
    "screenout_code": "SCR33N",
    "consent_text": "You agree that your messages are kept for research.",
}


def queue_replies(make_conversation: Any, study: Study, messages: int) -> list[Turn]:
    """`messages` messages of other raters in `study` (one without a bound), each leaving K (2) candidate
    replies PENDING: the generation queue, which every study shares."""
    assert not study.max_queued_turns
    pending: list[Turn] = []
    for _ in range(messages):
        conversation = make_conversation(study=study)
        user_turn = services.message_send(conversation=conversation, text="Hello")
        pending += list(Turn.objects.filter(parent=user_turn, status=Turn.Status.PENDING))
    return pending


def finished_recently(turns: list[Turn], seconds_ago: float = 10) -> None:
    """Stand in for the workers: these replies finished `seconds_ago`."""
    when = timezone.now() - timedelta(seconds=seconds_ago)
    Turn.objects.filter(pk__in=[t.pk for t in turns]).update(status=Turn.Status.DONE, text="ok", finished_at=when)


def start(client: Client, study: Study) -> Any:
    return client.post(reverse("annotate:study_start", args=[study.slug]))


def test_a_busy_study_refuses_new_conversations_with_503_and_retry_after(
    client, make_study, make_conversation, make_user
):
    study = make_study(max_queued_turns=3)
    queue_replies(make_conversation, make_study(), 2)  # 4 replies waiting > 3
    rater = make_user()
    client.force_login(rater)

    response = start(client, study)

    assert response.status_code == 503
    retry = int(response["Retry-After"])
    assert services.BUSY_RETRY_MIN_SECONDS <= retry <= services.BUSY_RETRY_MAX_SECONDS
    assert f"try again in {retry} s" in response.content.decode()
    assert not Conversation.objects.filter(rater=rater).exists()  # nothing written
    assert not Participant.objects.filter(user=rater).exists()


def test_at_the_bound_and_without_one_conversations_start(client, make_study, make_conversation, make_user):
    study = make_study(max_queued_turns=4)
    queue_replies(make_conversation, make_study(), 2)  # exactly 4 waiting: not more than the bound
    client.force_login(make_user())
    assert start(client, study).status_code == 302
    unbounded = make_study(scenarios=6)  # max_queued_turns 0: no bound, whatever the queue
    assert unbounded.max_queued_turns == 0
    queue_replies(make_conversation, unbounded, 3)
    client.force_login(make_user())
    assert start(client, unbounded).status_code == 302


def test_the_queue_is_counted_over_all_studies(client, make_study, make_conversation, make_user):
    busy_elsewhere = make_study(scenarios=6)
    queue_replies(make_conversation, busy_elsewhere, 2)
    study = make_study(scenarios=3, max_queued_turns=2)
    client.force_login(make_user())
    assert start(client, study).status_code == 503


def test_an_active_conversation_resumes_and_goes_on_while_busy(client, make_study, make_conversation, make_user):
    study = make_study(max_queued_turns=2)
    conversation = make_conversation(study=study)  # started before the rush
    queue_replies(make_conversation, make_study(), 2)
    client.force_login(conversation.rater)

    # Resuming is never refused: the start button leads back to the conversation
    response = start(client, study)
    assert response.status_code == 302
    assert response["Location"] == reverse("annotate:conversation", args=[conversation.pk])
    # ... and the conversation goes on: a message, its replies, a vote, the next message
    url = reverse("annotate:message_send", args=[conversation.pk])
    assert client.post(url, {"text": "Plan a party", "client_key": str(uuid.uuid4())}).status_code in (200, 302)
    user_turn = Turn.objects.get(conversation=conversation, role=Turn.Role.USER)
    a, _ = finish_candidates(user_turn)
    choose(conversation, user_turn.pk, choice="candidate", chosen_id=a.pk)
    assert client.post(url, {"text": "For ten kids", "client_key": str(uuid.uuid4())}).status_code in (200, 302)
    assert Turn.objects.filter(conversation=conversation, role=Turn.Role.USER).count() == 2


def test_retry_after_is_the_queue_over_the_last_minutes_throughput(make_study, make_conversation, make_user):
    study = make_study(max_queued_turns=1)
    queued = queue_replies(make_conversation, make_study(scenarios=6), 6)  # 12 replies
    # Nothing finished in the last minute: the longest wait
    with pytest.raises(ActionRefused) as nothing_moves:
        services.conversation_start(study=study, rater=make_user())
    assert nothing_moves.value.status == 503
    assert nothing_moves.value.headers == {"Retry-After": str(services.BUSY_RETRY_MAX_SECONDS)}
    # 6 finished in the last minute (0.1/s), 6 still waiting: 60 s
    finished_recently(queued[:6])
    with pytest.raises(ActionRefused) as some_move:
        services.conversation_start(study=study, rater=make_user())
    assert some_move.value.headers == {"Retry-After": "60"}
    # Replies finished before the last minute do not count
    finished_recently(queued[6:8], seconds_ago=120)
    with pytest.raises(ActionRefused) as older:
        services.conversation_start(study=study, rater=make_user())
    assert older.value.headers == {"Retry-After": "40"}  # 4 waiting / 0.1 per s
    # A fast queue: never less than the floor (4 waiting, 66 finished in the last minute: 3.6 s)
    many = queue_replies(make_conversation, make_study(scenarios=30), 30)
    finished_recently(many[:58] + queued[8:10])
    with pytest.raises(ActionRefused) as fast:
        services.conversation_start(study=study, rater=make_user())
    assert fast.value.headers == {"Retry-After": str(services.BUSY_RETRY_MIN_SECONDS)}


def test_counting_the_queue_can_use_the_partial_index(make_study, make_conversation):
    queue_replies(make_conversation, make_study(), 1)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")  # tiny tables here: make the planner show its hand
        plan = Turn.objects.filter(status=Turn.Status.PENDING).explain()
    assert "turn_pending_created" in plan, plan


# --- panel participants --------------------------------------------------------------------------


def panel_enter(client: Client, study: Study, pid: str) -> Participant:
    url = reverse("annotate:panel_enter", args=[study.slug])
    response = client.get(f"{url}?PROLIFIC_PID={pid}&STUDY_ID=st&SESSION_ID=se")
    assert response.status_code == 302
    return Participant.objects.get(study=study, external_id=pid)


def test_a_participant_refused_as_busy_at_consent_keeps_their_place(client, make_study, make_conversation):
    study = make_study(max_queued_turns=1, conversations_per_rater=1, **PANEL)
    queue_replies(make_conversation, make_study(), 1)
    participant = panel_enter(client, study, "busy-at-consent")

    response = client.post(reverse("annotate:panel_consent", args=[study.slug]), {"decision": "agree"})

    assert response.status_code == 503 and response["Retry-After"]
    page = response.content.decode()
    assert "try again in" in page and reverse("annotate:panel_work", args=[study.slug]) in page
    participant.refresh_from_db()
    assert participant.status == Participant.Status.ACTIVE and participant.consented_at is not None
    assert participant.completed_at is None and participant.screenout_reason == ""
    assert not Conversation.objects.filter(rater=participant.user).exists()
    # Once the queue has drained, the work page's button starts their conversation
    Turn.objects.filter(status=Turn.Status.PENDING).update(status=Turn.Status.DONE, finished_at=timezone.now())
    response = client.post(reverse("annotate:panel_work", args=[study.slug]))
    conversation = Conversation.objects.get(rater=participant.user, status=Conversation.Status.ACTIVE)
    assert response["Location"] == reverse("annotate:conversation", args=[conversation.pk])


def test_a_participant_with_finished_work_refused_as_busy_is_not_completed(client, make_study, make_conversation):
    # A study asking for 3 conversations: after the first, a refusal would otherwise end their place early
    study = make_study(scenarios=6, max_queued_turns=1, conversations_per_rater=3, **PANEL)
    participant = panel_enter(client, study, "busy-after-one")
    client.post(reverse("annotate:panel_consent", args=[study.slug]), {"decision": "agree"})
    conversation = Conversation.objects.get(rater=participant.user)
    user_turn = services.message_send(conversation=conversation, text="Hello")
    a, _ = finish_candidates(user_turn)
    choose(conversation, user_turn.pk, choice="candidate", chosen_id=a.pk)
    work_url = reverse("annotate:panel_work", args=[study.slug])
    finish = client.post(reverse("annotate:finish", args=[conversation.pk]), {"goal": "yes", "understanding": "4"})
    assert finish["Location"] == work_url
    queue_replies(make_conversation, make_study(), 1)

    response = client.post(work_url, {"action": "start"})

    assert response.status_code == 503 and int(response["Retry-After"]) >= services.BUSY_RETRY_MIN_SECONDS
    assert "try again in" in response.content.decode()
    participant.refresh_from_db()
    assert participant.status == Participant.Status.ACTIVE and participant.completed_at is None
    assert Conversation.objects.filter(rater=participant.user).count() == 1
    # The done page does not complete them either: work is left
    assert client.get(reverse("annotate:panel_done", args=[study.slug]))["Location"] == work_url
    participant.refresh_from_db()
    assert participant.status == Participant.Status.ACTIVE


def test_study_admin_shows_the_bound(client, make_study, make_user):
    study = make_study()
    client.force_login(make_user(is_staff=True, is_superuser=True))
    page = client.get(reverse("admin:annotate_study_change", args=[study.pk])).content.decode()
    assert 'name="max_queued_turns"' in page
