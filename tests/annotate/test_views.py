"""Rater views on PostgreSQL: permissions, clear 4xx answers, escaping, htmx fragments."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from annotate import selectors, services
from annotate.models import Comparison, Turn
from labeling.selectors import labels_forget_all
from tests.helpers import HTMX, choose, finish_candidates

pytestmark = pytest.mark.django_db


@pytest.fixture
def rater_client(client, make_conversation):
    conversation = make_conversation()
    client.force_login(conversation.rater)
    client.conversation = conversation
    return client


def send(client, conversation, text: str, key: str | None = None, **extra):
    url = reverse("annotate:message_send", args=[conversation.pk])
    return client.post(url, {"text": text, "client_key": key or str(uuid.uuid4())}, **extra)


def test_pages_need_login(client, make_conversation):
    conversation = make_conversation()
    for url in (reverse("annotate:home"), reverse("annotate:conversation", args=[conversation.pk])):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_another_raters_conversation_is_404_everywhere(client, make_conversation, make_user):
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="mine")
    candidate = finish_candidates(user_turn)[0]
    client.force_login(make_user())
    pk = conversation.pk
    gets = ["conversation", "transcript", "stream"]
    for name in gets:
        assert client.get(reverse(f"annotate:{name}", args=[pk])).status_code == 404, name
    posts = {
        reverse("annotate:message_send", args=[pk]): {"text": "hi", "client_key": str(uuid.uuid4())},
        reverse("annotate:vote", args=[pk]): {
            "parent": user_turn.pk,
            "choice": candidate.pk,
            "idempotency_key": str(uuid.uuid4()),
        },
        reverse("annotate:turn_retry", args=[pk, candidate.pk]): {},
        reverse("annotate:finish", args=[pk]): {"goal": "yes", "understanding": "5"},
    }
    for url, data in posts.items():
        assert client.post(url, data).status_code == 404, url
    assert not Comparison.objects.exists()
    assert conversation.turns.filter(role=Turn.Role.USER).count() == 1


def test_home_lists_studies_and_conversations(rater_client):
    response = rater_client.get(reverse("annotate:home"))
    assert response.status_code == 200
    assert rater_client.conversation.study.name in response.content.decode()
    assert f"/c/{rater_client.conversation.pk}/" in response.content.decode()


def test_start_redirects_to_conversation(client, make_study, make_user):
    study = make_study()
    client.force_login(make_user())
    response = client.post(reverse("annotate:study_start", args=[study.slug]))
    assert response.status_code == 302 and re.search(r"/c/\d+/$", response["Location"])


def test_start_with_no_scenarios_left_is_a_clear_409(client, make_study, make_user):
    study = make_study(scenarios=0)
    client.force_login(make_user())
    response = client.post(reverse("annotate:study_start", args=[study.slug]))
    assert response.status_code == 409 and "no scenarios left" in response.content.decode()


def test_send_returns_fragment_with_streaming_candidates(rater_client):
    conversation = rater_client.conversation
    response = send(rater_client, conversation, "<img src=x onerror=alert(1)>", **HTMX)
    body = response.content.decode()
    assert response.status_code == 200
    assert body.lstrip().startswith('<section id="session"')
    assert "&lt;img src=x onerror=alert(1)&gt;" in body and "<img src=x" not in body
    assert f'data-stream-url="/c/{conversation.pk}/stream/"' in body
    assert body.count('class="candidate"') == 2


def test_send_without_js_redirects(rater_client):
    response = send(rater_client, rater_client.conversation, "hello")
    assert response.status_code == 302 and response["Location"] == f"/c/{rater_client.conversation.pk}/"


def test_oversized_message_gets_clear_413_and_nothing_written(rater_client):
    conversation = rater_client.conversation
    response = send(rater_client, conversation, "x" * 5000, **HTMX)
    assert response.status_code == 413
    assert response["HX-Retarget"] == "#errors"
    assert "5,000 characters long; the limit is 2,000" in response.content.decode()
    assert not conversation.turns.exists()
    # Without JavaScript the whole page comes back with the message and the same status.
    page = send(rater_client, conversation, "x" * 5000)
    assert page.status_code == 413 and "the limit is 2,000" in page.content.decode()


def test_empty_message_and_missing_key_are_400(rater_client):
    conversation = rater_client.conversation
    assert send(rater_client, conversation, "   ", **HTMX).status_code == 400
    url = reverse("annotate:message_send", args=[conversation.pk])
    response = rater_client.post(url, {"text": "hi"}, **HTMX)
    assert response.status_code == 400 and "request key" in response.content.decode()
    assert not conversation.turns.exists()


def test_vote_by_candidate_id_and_double_post(rater_client):
    conversation = rater_client.conversation
    send(rater_client, conversation, "hello")
    conversation.refresh_from_db()
    user_turn = conversation.head
    a, b = finish_candidates(user_turn)
    page = rater_client.get(reverse("annotate:conversation", args=[conversation.pk]), **HTMX).content.decode()
    assert "data-stream-url" not in page and 'id="vote-submit"' in page
    key = re.search(r'name="idempotency_key" value="([^"]+)"', page).group(1)
    data = {
        "parent": user_turn.pk,
        "choice": str(b.pk),
        "strength": "slight",
        "reason": "<b>asks</b>",
        "idempotency_key": key,
    }
    url = reverse("annotate:vote", args=[conversation.pk])
    first = rater_client.post(url, data, **HTMX)
    second = rater_client.post(url, data, **HTMX)
    assert first.status_code == second.status_code == 200
    comparison = Comparison.objects.get()
    assert (comparison.chosen_id, comparison.strength, comparison.reason) == (b.pk, "slight", "<b>asks</b>")
    assert 'id="message-form"' in second.content.decode()


@pytest.mark.parametrize(
    ("data", "status"),
    [
        ({"choice": "maybe"}, 400),
        ({"choice": "999999"}, 400),
        ({"parent": "abc"}, 400),
        ({"idempotency_key": "x"}, 400),
        ({"choice": "²"}, 400),  # "²".isdigit() is True, int("²") fails: was a 500
        ({"choice": "9" * 30}, 400),  # past 64 bits
        ({"parent": "²"}, 400),
    ],
)
def test_malformed_votes_are_4xx(rater_client, data, status):
    conversation = rater_client.conversation
    send(rater_client, conversation, "hello")
    conversation.refresh_from_db()
    finish_candidates(conversation.head)
    payload = {"parent": conversation.head_id, "choice": "tie", "idempotency_key": str(uuid.uuid4()), **data}
    response = rater_client.post(reverse("annotate:vote", args=[conversation.pk]), payload, **HTMX)
    assert response.status_code in (status, 409)
    assert response.status_code < 500
    assert not Comparison.objects.exists()


def test_finish_redirects_to_transcript_with_branches(rater_client):
    conversation = rater_client.conversation
    send(rater_client, conversation, "hello")
    conversation.refresh_from_db()
    a, b = finish_candidates(conversation.head, ("first <i>reply</i>", "second reply"))
    choose(
        conversation,
        conversation.head_id,
        choice="candidate",
        chosen_id=a.pk,
    )
    url = reverse("annotate:finish", args=[conversation.pk])
    response = rater_client.post(url, {"goal": "yes", "understanding": "4"}, **HTMX)
    assert response.status_code == 204
    assert response["HX-Redirect"] == f"/c/{conversation.pk}/transcript/"
    transcript = rater_client.get(response["HX-Redirect"]).content.decode()
    assert "first &lt;i&gt;reply&lt;/i&gt;" in transcript and "second reply" in transcript
    assert "Goal reached" in transcript
    # The finished conversation's live page now goes to the transcript.
    assert rater_client.get(f"/c/{conversation.pk}/").status_code == 302


def test_stream_sends_each_candidate_then_end(rater_client):
    conversation = rater_client.conversation
    send(rater_client, conversation, "hello")
    conversation.refresh_from_db()
    a, b = finish_candidates(conversation.head, ("alpha", "beta"))
    response = rater_client.get(reverse("annotate:stream", args=[conversation.pk]))
    assert response["Content-Type"] == "text/event-stream"
    body = b"".join(response).decode()
    events = [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:") and '"id"' in line]
    assert {(e["id"], e["text"], e["status"]) for e in events} == {(a.pk, "alpha", "done"), (b.pk, "beta", "done")}
    assert body.rstrip().endswith("data: {}")


def test_retry_puts_failed_candidate_back_to_pending(rater_client, django_capture_on_commit_callbacks):
    conversation = rater_client.conversation
    send(rater_client, conversation, "hello")
    conversation.refresh_from_db()
    a, b = selectors.candidates_of(conversation.head)
    Turn.objects.filter(pk=a.pk).update(status=Turn.Status.FAILED, error="Model server unreachable")
    page = rater_client.get(reverse("annotate:conversation", args=[conversation.pk]), **HTMX).content.decode()
    assert Turn.RATER_ERROR in page and "Retry reply A" in page  # the detail is for staff (admin)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = rater_client.post(reverse("annotate:turn_retry", args=[conversation.pk, a.pk]), **HTMX)
    assert response.status_code == 200
    a.refresh_from_db()
    assert a.status == Turn.Status.PENDING and a.error == "" and len(callbacks) == 1


# --- small answers: what changed, not the whole session (issue 11) -------------------------------------


def _talk(client, conversation, turns: int) -> None:
    """`turns` exchanges through the services: message, both replies done, A chosen."""
    for n in range(turns):
        user_turn = services.message_send(conversation=conversation, text=f"message number {n} " + "x" * 300)
        a, _ = finish_candidates(user_turn, (f"reply {n} A " + "y" * 300, f"reply {n} B"))
        choose(conversation, user_turn.pk, choice="candidate", chosen_id=a.pk)


def _message_and_vote(client, conversation):
    """A message and a vote as htmx sends them (with `shown`, the head the page showed): both answers."""
    conversation.refresh_from_db()
    url = reverse("annotate:message_send", args=[conversation.pk])
    data = {"text": "Next please", "client_key": str(uuid.uuid4()), "shown": conversation.head_id or ""}
    sent = client.post(url, data, **HTMX)
    conversation.refresh_from_db()
    a, _ = finish_candidates(conversation.head, ("fresh A", "fresh B"))
    data = {"parent": conversation.head_id, "choice": a.pk, "idempotency_key": str(uuid.uuid4())}
    voted = client.post(
        reverse("annotate:vote", args=[conversation.pk]), {**data, "shown": conversation.head_id}, **HTMX
    )
    return sent, voted


def test_a_message_and_a_vote_answer_with_what_changed_in_bounded_queries(client, make_conversation):
    sizes, counts = {}, {}
    for turns in (2, 8):
        conversation = make_conversation()
        client.force_login(conversation.rater)
        _talk(client, conversation, turns)
        cache.clear()  # both sizes cold: the labels are read once, then cached
        labels_forget_all()
        with CaptureQueriesContext(connection) as queries:
            sent, voted = _message_and_vote(client, conversation)
        assert sent.status_code == voted.status_code == 200
        sent_body, voted_body = sent.content.decode(), voted.content.decode()
        # The message: the composer (candidates streaming) and the new message appended out of band
        assert sent_body.lstrip().startswith('<div id="composer"') and 'data-stream-url="' in sent_body
        assert 'hx-swap-oob="beforeend:#transcript"' in sent_body and "Next please" in sent_body
        # The vote: the chosen reply appended, the message form back
        assert "fresh A" in voted_body and 'id="message-form"' in voted_body
        # ... and no earlier turn is sent again (tag bars only name them, truncated, in their "links to" list)
        # but the message before the new one, re-sent folded (its feedback buttons are for the latest only)
        first_turn = Turn.objects.filter(conversation=conversation, depth=0).get()
        assert f'id="turn-{first_turn.pk}"' not in sent_body + voted_body
        assert sent_body.count('<li class="msg') == 2
        assert voted_body.count('<li class="msg') == 1
        sizes[turns] = (len(sent.content), len(voted.content))
        counts[turns] = len(queries)
    # What a rater's action costs does not grow with the conversation
    assert counts[8] == counts[2], counts
    # Sizes grow only by the tag bars' "links to" lists (a truncated line per earlier turn), not by the transcript
    assert max(sizes[8]) < 20_000 and sizes[8][0] - sizes[2][0] < 2_000 and sizes[8][1] - sizes[2][1] < 600, sizes


def test_a_page_showing_another_state_gets_the_whole_session(rater_client):
    conversation = rater_client.conversation
    _talk(rater_client, conversation, 2)
    conversation.refresh_from_db()
    url = reverse("annotate:message_send", args=[conversation.pk])
    stale = {"text": "From an old tab", "client_key": str(uuid.uuid4()), "shown": "999999999"}
    response = rater_client.post(url, stale, **HTMX)
    body = response.content.decode()
    assert response.status_code == 200 and response["HX-Retarget"] == "#session"
    assert body.lstrip().startswith('<section id="session"') and "message number 0" in body
