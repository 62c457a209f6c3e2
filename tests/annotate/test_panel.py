"""Panel participants on PostgreSQL: the study link, consent, the hand-over to work, completion only once the
work is committed, screen-out and return, time on task, the pay sheet and its permission."""

from __future__ import annotations

import csv
import io
import threading
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import IntegrityError, connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotate import panel, services, signals
from annotate.models import Conversation, Participant, Study, Turn
from tests.helpers import HTMX, choose, finish_candidates, staff_with

pytestmark = pytest.mark.django_db

PANEL = {
    "completion_url": "https://app.prolific.com/submissions/complete?cc={code}",
    "completion_code": "C0MPL3TE",
    "screenout_code": "SCR33N",
    "returned_code": "RETURN3D",
    "consent_text": "You agree that your messages are kept for research.",
    "instructions": "Talk to the assistant and pick the better reply.",
    "conversations_per_rater": 1,
}


@pytest.fixture
def crowd_study(make_study: Any) -> Any:
    def make(**fields: Any) -> Study:
        return make_study(**{**PANEL, **fields})

    return make


def link(study: Study, pid: str | None = "5f1a2b3c4d5e6f7a8b9c0d1e", **extra: str) -> str:
    params = {"STUDY_ID": "st-1", "SESSION_ID": "se-1", **extra}
    if pid is not None:
        params["PROLIFIC_PID"] = pid
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{reverse('annotate:panel_enter', args=[study.slug])}?{query}"


def enter(client: Client, study: Study, pid: str = "5f1a2b3c4d5e6f7a8b9c0d1e", **extra: str) -> Participant:
    response = client.get(link(study, pid, **extra))
    assert response.status_code == 302, response.content.decode()[:500]
    return Participant.objects.get(study=study, external_id=pid)


def work_one(conversation: Conversation) -> Conversation:
    """One message, the first reply chosen: ready to be finished."""
    user_turn = services.message_send(conversation=conversation, text="Hello")
    a, _ = finish_candidates(user_turn)
    choose(conversation, user_turn.pk, choice="candidate", chosen_id=a.pk)
    return conversation


def finish(client: Client, conversation: Conversation, **extra: Any) -> Any:
    url = reverse("annotate:finish", args=[conversation.pk])
    return client.post(url, {"goal": "yes", "understanding": "4"}, **extra)


def consent_and_start(client: Client, study: Study) -> Conversation:
    response = client.post(reverse("annotate:panel_consent", args=[study.slug]), {"decision": "agree"})
    assert response.status_code == 302
    conversation = Conversation.objects.get(study=study, status="active", rater__participations__study=study)
    assert response["Location"] == reverse("annotate:conversation", args=[conversation.pk])
    return conversation


# --- entry ---------------------------------------------------------------------------------------


def test_the_link_makes_a_participant_without_a_password_and_signs_the_browser_in(client, crowd_study):
    study = crowd_study()
    response = client.get(link(study))
    participant = Participant.objects.get(study=study)
    assert response.status_code == 302 and response["Location"] == reverse("annotate:panel_consent", args=[study.slug])
    assert (participant.external_id, participant.panel_study_id, participant.panel_session_id) == (
        "5f1a2b3c4d5e6f7a8b9c0d1e",
        "st-1",
        "se-1",
    )
    assert participant.status == Participant.Status.ACTIVE and participant.consented_at is None
    user = participant.user
    assert not user.has_usable_password() and not user.is_staff
    assert user.username.startswith(f"p-{study.slug}-") and "5f1a2b" not in user.username
    assert int(client.session["_auth_user_id"]) == user.pk
    assert client.session["_auth_user_backend"] == "django.contrib.auth.backends.ModelBackend"


def test_returning_resumes_the_same_participant_from_another_browser(client, crowd_study):
    study = crowd_study()
    first = enter(client, study)
    other_browser = Client()
    again = enter(other_browser, study, SESSION_ID="se-2")
    assert again.pk == first.pk and again.user_id == first.user_id
    assert again.panel_session_id == "se-2"  # the latest panel session is kept
    assert Participant.objects.count() == 1 and User.objects.filter(username__startswith="p-").count() == 1
    assert int(other_browser.session["_auth_user_id"]) == first.user_id


def test_parameter_names_are_the_studys(client, crowd_study):
    study = crowd_study(panel_participant_param="workerId", panel_study_param="", panel_session_param="assignmentId")
    url = reverse("annotate:panel_enter", args=[study.slug])
    assert client.get(f"{url}?PROLIFIC_PID=abc").status_code == 400
    assert client.get(f"{url}?workerId=A1B2C3&assignmentId=X9").status_code == 302
    participant = Participant.objects.get(study=study)
    assert (participant.external_id, participant.panel_session_id) == ("A1B2C3", "X9")


@pytest.mark.parametrize(
    "query, message",
    [
        ("STUDY_ID=s", "has no participant id (PROLIFIC_PID)"),
        ("PROLIFIC_PID=", "has no participant id"),
        ("PROLIFIC_PID=%20%20", "has no participant id"),
        ("PROLIFIC_PID=" + "a" * 101, "at most 100"),
        ("PROLIFIC_PID=ab%00cd", "characters an id cannot have"),
        ("PROLIFIC_PID=ab%0Acd", "characters an id cannot have"),
        ("PROLIFIC_PID=ab%1Bcd", "characters an id cannot have"),
        ("PROLIFIC_PID=a&PROLIFIC_PID=b", "more than once"),
        ("PROLIFIC_PID={{%25PROLIFIC_PID%25}}", "placeholder"),
        ("PROLIFIC_PID=ok&SESSION_ID=" + "s" * 101, "SESSION_ID in the study link is 101 characters"),
        ("PROLIFIC_PID=ok&STUDY_ID=x%00", "STUDY_ID in the study link contains"),
    ],
)
def test_a_bad_id_is_a_clear_400_and_makes_nothing(client, crowd_study, query, message):
    study = crowd_study()
    response = client.get(f"{reverse('annotate:panel_enter', args=[study.slug])}?{query}")
    assert response.status_code == 400
    page = response.content.decode()
    assert message in page and 'id="panel-message"' in page
    assert "Back to your studies" not in page  # participants are never pointed at the list of studies
    assert not Participant.objects.exists() and "_auth_user_id" not in client.session


def test_an_id_of_100_printable_characters_is_taken(client, crowd_study):
    study = crowd_study()
    pid = "Ünïcode-id_" + "x" * 89
    assert len(pid) == 100
    assert enter(client, study, pid).external_id == pid


def test_unknown_study_and_closed_study(client, crowd_study):
    assert client.get("/p/no-such-study/?PROLIFIC_PID=a").status_code == 404
    study = crowd_study()
    returning = enter(Client(), study, "early-bird")
    Study.objects.filter(pk=study.pk).update(is_active=False)
    response = client.get(link(study, "newcomer"))
    assert response.status_code == 409 and "This study is closed" in response.content.decode()
    assert not Participant.objects.filter(external_id="newcomer").exists()
    # ... one who entered before gets back in (their steps say what is possible)
    assert enter(Client(), study, "early-bird").pk == returning.pk


def test_another_panel_account_is_signed_out_at_once(client, crowd_study):
    study = crowd_study()
    first = enter(client, study, "first-id")
    second = enter(client, study, "second-id")
    assert first.user_id != second.user_id
    assert int(client.session["_auth_user_id"]) == second.user_id


def test_an_account_with_a_password_is_asked_before_it_is_signed_out(client, crowd_study, make_user):
    study = crowd_study()
    researcher = make_user(is_staff=True)
    client.force_login(researcher)
    response = client.get(link(study))
    assert response.status_code == 200 and 'id="panel-switch"' in response.content.decode()
    assert int(client.session["_auth_user_id"]) == researcher.pk and not Participant.objects.exists()
    response = client.post(link(study))
    assert response.status_code == 302
    participant = Participant.objects.get(study=study)
    assert int(client.session["_auth_user_id"]) == participant.user_id


def test_a_deactivated_participant_account_is_refused(client, crowd_study):
    study = crowd_study()
    participant = enter(Client(), study)
    User.objects.filter(pk=participant.user_id).update(is_active=False)
    response = client.get(link(study))
    assert response.status_code == 403 and "Your place in this study was closed" in response.content.decode()


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_entries_make_one_participant(crowd_study, monkeypatch):
    """Both entries look first and find nobody (held at a barrier), then both create: one insert wins, the
    other entry resumes that participant."""
    study = crowd_study()
    ids = panel.PanelIds(participant="same-person", study="st", session="se")
    threads = 4
    barrier = threading.Barrier(threads)
    looked = threading.local()
    real_lookup = panel._panel_participant

    def lookup_then_wait(*args: Any) -> Any:
        found = real_lookup(*args)
        if not getattr(looked, "once", False):
            looked.once = True
            barrier.wait(timeout=10)
        return found

    monkeypatch.setattr(panel, "_panel_participant", lookup_then_wait)
    creations: list[str] = []
    real_create = panel._participant_create

    def create(*args: Any) -> Any:
        try:
            made = real_create(*args)
        except IntegrityError:
            creations.append("integrity error")
            raise
        creations.append("made" if made else "found someone else's")
        return made

    monkeypatch.setattr(panel, "_participant_create", create)
    results: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(panel.participant_enter(study=study, ids=ids).pk)
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert errors == []
    assert len(results) == threads and len(set(results)) == 1
    # every entry tried to create (none saw the others' rows first); one did
    assert len(creations) == threads and creations.count("made") == 1, creations
    assert Participant.objects.filter(study=study).count() == 1
    assert User.objects.filter(username=panel.participant_username(study, "same-person")).count() == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_first_entries_through_the_link(crowd_study):
    study = crowd_study()
    statuses: list[int] = []

    def run() -> None:
        try:
            statuses.append(Client().get(link(study, "racer")).status_code)
        finally:
            connection.close()

    workers = [threading.Thread(target=run) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)
    assert statuses == [302] * 4
    assert Participant.objects.filter(study=study, external_id="racer").count() == 1


# --- consent and work ----------------------------------------------------------------------------


def test_consent_page_shows_the_text_and_instructions_and_work_waits_for_it(client, crowd_study):
    study = crowd_study()
    participant = enter(client, study)
    page = client.get(reverse("annotate:panel_consent", args=[study.slug])).content.decode()
    assert PANEL["consent_text"] in page and PANEL["instructions"] in page
    assert 'value="agree"' in page and 'value="decline"' in page
    # No work before consent: the work page, the home page and the start button all lead back to it
    consent_url = reverse("annotate:panel_consent", args=[study.slug])
    assert client.get(reverse("annotate:panel_work", args=[study.slug]))["Location"] == consent_url
    assert client.get(reverse("annotate:home"))["Location"] == consent_url
    assert client.post(reverse("annotate:panel_work", args=[study.slug]))["Location"] == consent_url
    assert client.post(reverse("annotate:study_start", args=[study.slug])).status_code == 409
    assert client.get(reverse("annotate:panel_done", args=[study.slug]))["Location"] == consent_url
    assert not Conversation.objects.exists()
    participant.refresh_from_db()
    assert participant.consented_at is None and participant.status == Participant.Status.ACTIVE


def test_agreeing_starts_the_conversation(client, crowd_study):
    study = crowd_study()
    participant = enter(client, study)
    conversation = consent_and_start(client, study)
    participant.refresh_from_db()
    assert participant.consented_at is not None and conversation.rater_id == participant.user_id
    # Entering again resumes the conversation; the consent page sends on to it as well
    assert client.get(link(study))["Location"] == reverse("annotate:conversation", args=[conversation.pk])
    assert client.get(reverse("annotate:panel_consent", args=[study.slug]))["Location"] == reverse(
        "annotate:conversation", args=[conversation.pk]
    )


def test_declining_returns_the_participant_to_the_panel_with_the_returned_code(client, crowd_study):
    study = crowd_study()
    participant = enter(client, study)
    response = client.post(reverse("annotate:panel_consent", args=[study.slug]), {"decision": "decline"})
    assert response["Location"] == reverse("annotate:panel_done", args=[study.slug])
    participant.refresh_from_db()
    assert participant.status == Participant.Status.RETURNED and participant.consented_at is None
    page = client.get(response["Location"]).content.decode()
    expected = "https://app.prolific.com/submissions/complete?cc=RETURN3D"
    assert "RETURN3D" in page and f'content="3;url={expected}"' in page and f'href="{expected}"' in page
    # Coming back by the link changes nothing: still returned, no work
    assert client.get(link(study))["Location"] == reverse("annotate:panel_done", args=[study.slug])
    assert not Conversation.objects.exists()


def test_a_consent_post_without_a_decision_is_refused(client, crowd_study):
    study = crowd_study()
    enter(client, study)
    response = client.post(reverse("annotate:panel_consent", args=[study.slug]), {"decision": "maybe"})
    assert response.status_code == 400 and "I agree" in response.content.decode()


def test_participant_pages_without_the_participant_session_say_to_use_the_link(client, crowd_study, make_user):
    study = crowd_study()
    enter(Client(), study)
    for name in ("panel_consent", "panel_work", "panel_done"):
        response = client.get(reverse(f"annotate:{name}", args=[study.slug]))
        assert response.status_code == 403 and "Open the study again from your panel" in response.content.decode()
    client.force_login(make_user())
    assert client.get(reverse("annotate:panel_done", args=[study.slug])).status_code == 403


def test_the_qualification_hook_comes_between_consent_and_work(client, crowd_study):
    study = crowd_study()
    participant = enter(client, study)
    qualify = "/qualify/somewhere/"

    def step(participant: Participant, **_: Any) -> str | None:
        return qualify if participant.qualified_at is None else None

    signals.participant_step.connect(step, dispatch_uid="test-qualification")
    try:
        response = client.post(reverse("annotate:panel_consent", args=[study.slug]), {"decision": "agree"})
        assert response["Location"] == qualify and not Conversation.objects.exists()
        Participant.objects.filter(pk=participant.pk).update(qualified_at=timezone.now())
        participant.refresh_from_db()
        assert panel.participant_next_step(participant) == reverse("annotate:panel_work", args=[study.slug])
    finally:
        signals.participant_step.disconnect(dispatch_uid="test-qualification")


def test_participants_never_see_the_home_page_but_other_raters_do(client, crowd_study, make_user):
    study = crowd_study()
    enter(client, study)
    conversation = consent_and_start(client, study)
    assert client.get(reverse("annotate:home"))["Location"] == reverse("annotate:conversation", args=[conversation.pk])
    rater = Client()
    rater.force_login(make_user())
    assert rater.get(reverse("annotate:home")).status_code == 200


def test_a_panel_account_cannot_start_another_study(client, crowd_study):
    study = crowd_study()
    other = crowd_study()
    enter(client, study)
    response = client.post(reverse("annotate:study_start", args=[other.slug]))
    assert response.status_code == 403 and not Conversation.objects.filter(study=other).exists()


# --- exit ----------------------------------------------------------------------------------------


def test_finishing_the_work_leads_to_the_completion_url_only_once_it_is_committed(client, crowd_study):
    study = crowd_study()
    participant = enter(client, study)
    conversation = consent_and_start(client, study)
    done_url = reverse("annotate:panel_done", args=[study.slug])
    # Before the finish: the done page completes nothing and sends back to the conversation
    assert client.get(done_url)["Location"] == reverse("annotate:conversation", args=[conversation.pk])
    participant.refresh_from_db()
    assert participant.status == Participant.Status.ACTIVE and participant.completed_at is None

    work_one(conversation)
    response = finish(client, conversation, **HTMX)
    assert response.status_code == 204 and response["HX-Redirect"] == done_url
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.COMPLETED
    participant.refresh_from_db()
    assert participant.status == Participant.Status.ACTIVE  # recorded by the done page, from the database

    page = client.get(done_url)
    assert page.status_code == 200
    html = page.content.decode()
    expected = "https://app.prolific.com/submissions/complete?cc=C0MPL3TE"
    assert f'<meta http-equiv="refresh" content="3;url={expected}">' in html
    assert f'href="{expected}"' in html and "C0MPL3TE" in html
    participant.refresh_from_db()
    assert participant.status == Participant.Status.COMPLETED and participant.completed_at is not None
    # Entering again shows the code again
    assert client.get(link(study))["Location"] == done_url


def test_a_plain_finish_post_redirects_a_participant_to_the_done_page(client, crowd_study):
    study = crowd_study()
    enter(client, study)
    conversation = work_one(consent_and_start(client, study))
    assert finish(client, conversation)["Location"] == reverse("annotate:panel_done", args=[study.slug])


def test_a_rater_made_by_hand_still_lands_on_the_transcript(client, make_conversation):
    conversation = work_one(make_conversation())
    client.force_login(conversation.rater)
    assert finish(client, conversation)["Location"] == reverse("annotate:transcript", args=[conversation.pk])


def test_a_quota_of_two_hands_out_the_next_conversation_first(client, crowd_study):
    study = crowd_study(conversations_per_rater=2)
    participant = enter(client, study)
    first = work_one(consent_and_start(client, study))
    work_url = reverse("annotate:panel_work", args=[study.slug])
    assert finish(client, first)["Location"] == work_url
    page = client.get(work_url).content.decode()
    assert "finished 1 conversation of 2" in page and 'id="panel-finish"' not in page
    # Finishing early is refused while the quota is not met
    assert client.post(work_url, {"action": "finish"}).status_code == 409
    response = client.post(work_url, {"action": "start"})
    second = Conversation.objects.get(study=study, status="active")
    assert response["Location"] == reverse("annotate:conversation", args=[second.pk]) and second.pk != first.pk
    work_one(second)
    assert finish(client, second)["Location"] == reverse("annotate:panel_done", args=[study.slug])
    client.get(reverse("annotate:panel_done", args=[study.slug]))
    participant.refresh_from_db()
    assert participant.status == Participant.Status.COMPLETED


def test_without_a_quota_the_participant_may_finish_after_one(client, crowd_study):
    study = crowd_study(conversations_per_rater=0)
    participant = enter(client, study)
    conversation = work_one(consent_and_start(client, study))
    work_url = reverse("annotate:panel_work", args=[study.slug])
    assert finish(client, conversation)["Location"] == work_url
    assert 'id="panel-finish"' in client.get(work_url).content.decode()
    response = client.post(work_url, {"action": "finish"})
    assert response["Location"] == reverse("annotate:panel_done", args=[study.slug])
    participant.refresh_from_db()
    assert participant.status == Participant.Status.COMPLETED


def test_no_scenarios_left_after_some_work_completes_the_participant(client, crowd_study):
    study = crowd_study(conversations_per_rater=3, scenarios=1)
    participant = enter(client, study)
    conversation = work_one(consent_and_start(client, study))
    work_url = reverse("annotate:panel_work", args=[study.slug])
    assert finish(client, conversation)["Location"] == work_url
    response = client.post(work_url, {"action": "start"})
    assert response["Location"] == reverse("annotate:panel_done", args=[study.slug])
    participant.refresh_from_db()
    assert participant.status == Participant.Status.COMPLETED


def test_no_places_left_screens_the_second_participant_out(client, crowd_study):
    study = crowd_study(overlap=1, scenarios=1)
    first = Client()
    enter(first, study, "first")
    consent_and_start(first, study)
    second = enter(client, study, "second")
    response = client.post(reverse("annotate:panel_consent", args=[study.slug]), {"decision": "agree"})
    assert response["Location"] == reverse("annotate:panel_done", args=[study.slug])
    second.refresh_from_db()
    assert second.status == Participant.Status.SCREENED_OUT and second.screenout_reason == panel.NO_PLACES
    html = client.get(response["Location"]).content.decode()
    assert "All places in this study are taken" in html and "cc=SCR33N" in html
    assert Conversation.objects.filter(study=study).count() == 1


def test_screen_out_service(crowd_study, make_user):
    study = crowd_study()
    participant = panel.participant_enter(study=study, ids=panel.PanelIds("qc-fail"))
    panel.participant_consent(participant)
    conversation = services.conversation_start(study=study, rater=participant.user)
    out = panel.participant_screen_out(participant, "Failed the qualification (score 0.5 < 0.8).\n")
    assert out.status == Participant.Status.SCREENED_OUT and out.completed_at is not None
    assert out.screenout_reason == "Failed the qualification (score 0.5 < 0.8)."
    conversation.refresh_from_db()
    assert conversation.status == Conversation.Status.ABANDONED  # the scenario goes back to the pool
    assert panel.exit_code(out) == "SCR33N"
    assert panel.exit_url(out) == "https://app.prolific.com/submissions/complete?cc=SCR33N"
    assert panel.participant_next_step(out) == reverse("annotate:panel_done", args=[study.slug])
    assert panel.participant_screen_out(out, "again").screenout_reason == out.screenout_reason  # idempotent
    with pytest.raises(panel.ActionRefused):
        panel.participant_return(out)


def test_a_completed_participant_cannot_be_screened_out(crowd_study):
    study = crowd_study()
    participant = panel.participant_enter(study=study, ids=panel.PanelIds("done"))
    panel.participant_consent(participant)
    conversation = work_one(services.conversation_start(study=study, rater=participant.user))
    services.conversation_finish(conversation=conversation, goal="yes", understanding=5)
    assert panel.participant_complete(participant).status == Participant.Status.COMPLETED
    with pytest.raises(panel.ActionRefused) as refused:
        panel.participant_screen_out(participant, "late")
    assert refused.value.status == 409


@pytest.mark.parametrize(
    "url, expected",
    [
        ("https://panel.example/done?cc={code}", "https://panel.example/done?cc=A%26B%20C"),
        ("/accounts/login/?cc={code}", "/accounts/login/?cc=A%26B%20C"),
        ("https://panel.example/done", "https://panel.example/done"),
        ("javascript:alert(1)//{code}", ""),
        ("//evil.example/{code}", ""),
        ("", ""),
    ],
)
def test_exit_url_quotes_the_code_and_follows_only_web_addresses(crowd_study, url, expected):
    study = crowd_study(completion_url=url, completion_code="A&B C")
    participant = Participant(study=study, status=Participant.Status.COMPLETED)
    assert panel.exit_url(participant) == expected


def test_done_page_without_a_completion_url_shows_the_code_to_enter(client, crowd_study):
    study = crowd_study(completion_url="")
    enter(client, study)
    conversation = work_one(consent_and_start(client, study))
    finish(client, conversation)
    html = client.get(reverse("annotate:panel_done", args=[study.slug])).content.decode()
    assert "C0MPL3TE" in html and "http-equiv" not in html and "Enter this code" in html


# --- time on task and pay ------------------------------------------------------------------------


def _at(participant: Participant, conversation: Conversation, *, start: Any, end: Any | None) -> None:
    Conversation.objects.filter(pk=conversation.pk).update(started_at=start, ended_at=end)


def test_time_on_task_sums_conversations_and_qualification(crowd_study):
    study = crowd_study(conversations_per_rater=0)
    participant = panel.participant_enter(study=study, ids=panel.PanelIds("timed"))
    t0 = timezone.now() - timedelta(hours=2)
    Participant.objects.filter(pk=participant.pk).update(
        consented_at=t0, qualified_at=t0 + timedelta(minutes=4, seconds=30)
    )
    participant.refresh_from_db()
    # A completed conversation: from its start to its finish (10 min)
    first = work_one(services.conversation_start(study=study, rater=participant.user))
    services.conversation_finish(conversation=first, goal="yes", understanding=5)
    Conversation.objects.filter(pk=first.pk).update(
        started_at=t0 + timedelta(minutes=5), ended_at=t0 + timedelta(minutes=15)
    )
    # An abandoned one: to the last activity (the last vote, 3 min in), not to when it was abandoned
    second = work_one(services.conversation_start(study=study, rater=participant.user))
    Conversation.objects.filter(pk=second.pk).update(
        started_at=t0 + timedelta(minutes=20),
        status="abandoned",
        ended_at=t0 + timedelta(hours=1),
        last_activity_at=t0 + timedelta(minutes=22),
    )
    Turn.objects.filter(conversation=second).update(created_at=t0 + timedelta(minutes=21))
    second.comparisons.update(created_at=t0 + timedelta(minutes=23))
    # Another participant's conversation does not count
    other = panel.participant_enter(study=study, ids=panel.PanelIds("other"))
    services.conversation_start(study=study, rater=other.user)
    times = panel.time_on_task([participant, other])
    assert times[participant.pk] == timedelta(minutes=4, seconds=30) + timedelta(minutes=10) + timedelta(minutes=3)
    assert times[other.pk] == timedelta(0)


def test_time_on_task_of_one_screened_out_in_qualification(crowd_study):
    study = crowd_study()
    participant = panel.participant_enter(study=study, ids=panel.PanelIds("qual"))
    panel.participant_consent(participant)
    Participant.objects.filter(pk=participant.pk).update(consented_at=timezone.now() - timedelta(minutes=6))
    participant.refresh_from_db()
    out = panel.participant_screen_out(participant, "Failed the qualification")
    assert timedelta(minutes=5, seconds=59) < panel.time_on_task([out])[out.pk] < timedelta(minutes=6, seconds=5)


def _complete(study: Study, pid: str, *, gold: int = 0, minutes: int = 0) -> Participant:
    participant = panel.participant_enter(study=study, ids=panel.PanelIds(pid, "st-1", f"se-{pid}"))
    panel.participant_consent(participant)
    conversation = work_one(services.conversation_start(study=study, rater=participant.user))
    services.conversation_finish(conversation=conversation, goal="yes", understanding=5)
    start = timezone.now() - timedelta(minutes=minutes)
    Conversation.objects.filter(pk=conversation.pk).update(
        started_at=start, ended_at=start + timedelta(minutes=minutes)
    )
    Participant.objects.filter(pk=participant.pk).update(gold_passed=gold)
    participant.refresh_from_db()
    return panel.participant_complete(participant)


def test_pay_sheet_columns_and_values(crowd_study):
    study = crowd_study(bonus_per_gold_passed=Decimal("0.25"), overlap=5)
    approved = _complete(study, "approved-1", gold=4, minutes=12)
    rejected = _complete(study, "rejected-1", gold=3, minutes=7)
    pending = _complete(study, "=HYPERLINK(1)", gold=1, minutes=5)
    panel.participants_review([approved], Participant.Review.APPROVED)
    panel.participants_review([rejected], Participant.Review.REJECTED)
    returned = panel.participant_enter(study=study, ids=panel.PanelIds("returned-1"))
    panel.participant_return(returned)
    screened = panel.participant_enter(study=study, ids=panel.PanelIds("screened-1"))
    panel.participant_screen_out(screened, "Failed the qualification")
    active = panel.participant_enter(study=study, ids=panel.PanelIds("active-1"))
    Participant.objects.create(study=study, user=User.objects.create_user("by-hand"))  # no panel id: not listed

    rows = list(csv.DictReader(io.StringIO(panel.pay_sheet(Participant.objects.filter(study=study)))))
    assert tuple(rows[0]) == panel.PAY_SHEET_COLUMNS
    assert panel.PAY_SHEET_COLUMNS[:5] == ("participant_id", "completion_code", "time_minutes", "status", "bonus")
    by_id = {row["participant_id"]: row for row in rows}
    assert set(by_id) == {"approved-1", "rejected-1", "'=HYPERLINK(1)", "returned-1", "screened-1", "active-1"}
    assert by_id["approved-1"] == {
        "participant_id": "approved-1",
        "completion_code": "C0MPL3TE",
        "time_minutes": "12.0",
        "status": "approved",
        "bonus": "1.00",
        "session_id": "se-approved-1",
        "gold_passed": "4",
        "excluded": "no",
    }
    assert (by_id["rejected-1"]["status"], by_id["rejected-1"]["bonus"]) == ("rejected", "0.00")
    pending_row = by_id["'=HYPERLINK(1)"]
    assert (pending_row["status"], pending_row["bonus"], pending_row["time_minutes"]) == (
        "awaiting_review",
        "0.25",
        "5.0",
    )
    assert (by_id["returned-1"]["status"], by_id["returned-1"]["completion_code"]) == ("returned", "RETURN3D")
    assert (by_id["screened-1"]["status"], by_id["screened-1"]["completion_code"]) == ("screened_out", "SCR33N")
    assert (by_id["active-1"]["status"], by_id["active-1"]["completion_code"], active.bonus) == ("active", "", 0)
    # The stored bonus follows the rule (set on completion and review: admin shows what the sheet says)
    approved.refresh_from_db()
    rejected.refresh_from_db()
    pending.refresh_from_db()
    assert (approved.bonus, rejected.bonus, pending.bonus) == (Decimal("1.00"), Decimal("0.00"), Decimal("0.25"))
    assert panel.participant_gold_passed(approved) == 4
    # Reading the sheet writes nothing (a viewer may download it), even where a stored figure is stale
    Participant.objects.filter(pk=pending.pk).update(bonus=Decimal("9.99"))
    rows = list(csv.DictReader(io.StringIO(panel.pay_sheet(Participant.objects.filter(study=study)))))
    assert next(r for r in rows if r["participant_id"] == "'=HYPERLINK(1)")["bonus"] == "0.25"
    pending.refresh_from_db()
    assert pending.bonus == Decimal("9.99")


def test_review_leaves_participants_who_did_not_complete_alone(crowd_study):
    study = crowd_study()
    active = panel.participant_enter(study=study, ids=panel.PanelIds("still-working"))
    assert panel.participants_review([active], Participant.Review.APPROVED) == 0
    active.refresh_from_db()
    assert active.review == Participant.Review.PENDING


# --- admin ---------------------------------------------------------------------------------------


def _staff(make_user: Any, *codenames: str) -> Any:
    return staff_with(make_user, *(f"annotate.{codename}" for codename in codenames))


def _action(client: Client, action: str, participants: list[Participant], **extra: Any) -> Any:
    data = {"action": action, "_selected_action": [p.pk for p in participants], **extra}
    return client.post(reverse("admin:annotate_participant_changelist"), data)


def test_pay_sheet_download_needs_view_participant(client, crowd_study, make_user):
    study = crowd_study(bonus_per_gold_passed=Decimal("0.50"))
    participant = _complete(study, "paid-1", gold=2, minutes=3)
    client.force_login(_staff(make_user, "view_study"))
    assert client.get(reverse("admin:annotate_participant_changelist")).status_code == 403
    assert _action(client, "download_pay_sheet", [participant]).status_code == 403

    client.force_login(_staff(make_user, "view_participant"))
    page = client.get(reverse("admin:annotate_participant_changelist")).content.decode()
    assert "Download pay sheet (CSV)" in page and "Approve the work" not in page  # no change permission
    response = _action(client, "download_pay_sheet", [participant])
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert f'filename="pay-sheet-{study.slug}-' in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [(r["participant_id"], r["completion_code"], r["status"], r["bonus"]) for r in rows] == [
        ("paid-1", "C0MPL3TE", "awaiting_review", "1.00")
    ]
    # A viewer cannot approve
    _action(client, "approve", [participant])
    participant.refresh_from_db()
    assert participant.review == Participant.Review.PENDING


def test_admin_actions_approve_reject_flag_exclude(client, crowd_study, make_user):
    study = crowd_study(bonus_per_gold_passed=Decimal("1.00"), overlap=3)
    one, two = _complete(study, "one", gold=2), _complete(study, "two", gold=2)
    client.force_login(_staff(make_user, "view_participant", "change_participant"))
    page = client.get(reverse("admin:annotate_participant_changelist") + f"?study__id__exact={study.pk}")
    assert page.status_code == 200 and "one" in page.content.decode()
    _action(client, "approve", [one])
    _action(client, "reject", [two])
    _action(client, "flag", [two])
    one.refresh_from_db()
    two.refresh_from_db()
    assert (one.review, one.bonus) == ("approved", Decimal("2.00"))
    assert (two.review, two.bonus, two.flagged) == ("rejected", Decimal("0.00"), True)
    # Exclusion asks for a reason first
    form = _action(client, "exclude_work", [two])
    assert form.status_code == 200 and "Exclude 1 participant" in form.content.decode()
    two.refresh_from_db()
    assert not two.excluded
    _action(client, "exclude_work", [two], apply="Exclude", reason="Copied replies", requeue="on")
    two.refresh_from_db()
    assert two.excluded and two.exclusion_reason == "Copied replies"
    # The change page shows the time on task; participants are not added by hand
    change = client.get(reverse("admin:annotate_participant_change", args=[one.pk])).content.decode()
    assert "Time on task" in change
    assert client.get(reverse("admin:annotate_participant_add")).status_code == 403


# --- a panel participant stays on their study's steps ------------------------------------------------


def test_a_panel_participant_is_kept_out_of_the_review_pass_and_has_no_log_out(client, crowd_study, make_user):
    study = crowd_study(overlap=2, review_overlap=2)
    finished = work_one(services.conversation_start(study=study, rater=make_user("talker")))
    services.conversation_finish(conversation=finished, goal="yes", understanding=4)
    enter(client, study)
    conversation = consent_and_start(client, study)
    step = reverse("annotate:conversation", args=[conversation.pk])
    assert client.get(reverse("labeling:review_home"))["Location"] == step
    response = client.post(reverse("labeling:review_next", args=[study.slug]))
    assert response.status_code == 403 and "own raters" in response.content.decode()
    assert not Participant.objects.filter(study=study, external_id__isnull=True).exclude(user__username="talker")
    page = client.get(step).content.decode()
    assert "Log out" not in page
    rater = Client()
    rater.force_login(make_user("by-hand"))
    assert "Log out" in rater.get(reverse("annotate:home")).content.decode()
    assert rater.get(reverse("labeling:review_home")).status_code == 200


def test_study_link_entries_are_limited_per_address(client, crowd_study, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "panel_entries": 3}
    study = crowd_study()
    statuses = [Client(REMOTE_ADDR="203.0.113.7").get(link(study, f"pid-{n}")).status_code for n in range(4)]
    assert statuses == [302, 302, 302, 429]
    refused = Client(REMOTE_ADDR="203.0.113.7").get(link(study, "pid-9"))
    assert int(refused["Retry-After"]) >= 1 and "too fast" in refused.content.decode()
    assert Participant.objects.filter(study=study).count() == 3  # the refused ones made nothing
    assert Client(REMOTE_ADDR="198.51.100.1").get(link(study, "pid-other")).status_code == 302  # another address
