"""Production posture: the secret key, the HTTPS settings (`check --deploy`), login lock-out, password
validators, per-rater rate limits, and raters never seeing a failed generation's detail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.http import HttpResponse
from django.test import Client, RequestFactory
from django.urls import reverse
from django_htmx.middleware import HtmxDetails

from annotate import selectors, services
from annotate.models import Turn
from core import ratelimit
from core.errors import ActionRefused
from core.http import answers_refusals, client_ip
from labeling import services as labeling
from labeling.models import Tag
from tests.helpers import HTMX, choose, finish_candidates, finished_conversation

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "k3Vq9-production-like-key-for-the-test-only-8Zr2Lw6Yp0Nc4Tb7Hs1Xm5Jd",
    "ALLOWED_HOSTS": "commonground.example.org",
    "CSRF_TRUSTED_ORIGINS": "https://commonground.example.org",
    "SESSION_COOKIE_SECURE": "1",
    "CSRF_COOKIE_SECURE": "1",
    "SECURE_SSL_REDIRECT": "1",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "1",
    "SECURE_HSTS_PRELOAD": "1",
    "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
}
SETTINGS_FROM_ENV = {*PRODUCTION, "DEBUG", "SECRET_KEY"}


def manage(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`manage.py args` in a fresh process whose environment has none of the settings above but `env`."""
    clean = {k: v for k, v in os.environ.items() if k not in SETTINGS_FROM_ENV}
    clean.update(COMMONGROUND_VAR_DIR=str(tmp_path / "var"), **env)
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )


# --- the secret key and the HTTPS settings ----------------------------------------------------


def test_without_debug_the_app_refuses_to_start_without_a_real_secret_key(tmp_path):
    unset = manage(tmp_path, "check")
    assert unset.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY is not set" in unset.stderr and "DEBUG=1" in unset.stderr
    published = manage(tmp_path, "check", SECRET_KEY="dev-only-insecure-key-change-me")
    assert published.returncode != 0 and "SECRET_KEY is not set (or is a published" in published.stderr
    # A development machine may run with DEBUG=1 and no key.
    assert manage(tmp_path, "check", DEBUG="1").returncode == 0


def test_check_deploy_reports_nothing_with_the_production_settings(tmp_path):
    production = manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert production.returncode == 0, production.stderr
    assert "System check identified no issues" in production.stdout
    # The embedded defaults (plain http on localhost) are what the production variables fix.
    embedded = manage(tmp_path, "check", "--deploy", SECRET_KEY=PRODUCTION["SECRET_KEY"])
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in embedded.stderr


# --- logins -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_forty_wrong_passwords_lock_the_account_out_from_that_address(client, make_user):
    user = make_user("alice", password="right-password-for-alice")
    login = reverse("login")
    for _ in range(40):
        response = client.post(login, {"username": "alice", "password": "wrong"})
        assert response.status_code in (200, 429)
    response = client.post(login, {"username": "alice", "password": "right-password-for-alice"})

    assert response.status_code == 429
    assert "_auth_user_id" not in client.session
    page = response.content.decode()
    assert "Too many failed log-in attempts" in page and "Try again in 15 minutes" in page
    assert int(response["Retry-After"]) == 15 * 60
    assert client.get(reverse("annotate:home")).status_code == 302  # still logged out
    # The lock is on this username from this address: the same account from elsewhere logs in.
    elsewhere = client.post(
        login, {"username": "alice", "password": "right-password-for-alice"}, REMOTE_ADDR="10.9.8.7"
    )
    assert elsewhere.status_code == 302 and client.session["_auth_user_id"] == str(user.pk)


@pytest.mark.django_db
def test_a_few_wrong_passwords_then_the_right_one_logs_in(client, make_user):
    make_user("bob", password="right-password-for-bob")
    for _ in range(4):
        assert client.post(reverse("login"), {"username": "bob", "password": "nope"}).status_code == 200
    response = client.post(reverse("login"), {"username": "bob", "password": "right-password-for-bob"})
    assert response.status_code == 302 and "_auth_user_id" in client.session


def test_the_four_standard_password_validators_apply(settings):
    assert [v["NAME"].rsplit(".", 1)[1] for v in settings.AUTH_PASSWORD_VALIDATORS] == [
        "UserAttributeSimilarityValidator",
        "MinimumLengthValidator",
        "CommonPasswordValidator",
        "NumericPasswordValidator",
    ]
    for weak in ("short", "password123", "8675309012"):
        with pytest.raises(ValidationError):
            validate_password(weak)
    validate_password("a correct horse staple")


# --- per-rater rate limits ------------------------------------------------------------------------


@pytest.fixture
def tagging(client, make_conversation):
    """A logged-in rater whose conversation awaits a vote on two finished replies."""
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="Can you plan a party?")
    a, _ = finish_candidates(user_turn, ("Do you mean a birthday party for kids?", "Here is a plan."))
    client.force_login(conversation.rater)
    client.conversation, client.reply = conversation, a
    return client


@pytest.mark.django_db
def test_a_burst_of_tags_over_the_limit_is_refused_with_retry_after_and_writes_nothing(
    tagging, make_conversation, settings
):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "tags": 3}
    reply = tagging.reply
    answers = [
        tagging.post(
            reverse("labeling:tag_add"),
            {"turn": reply.pk, "label": "clarification", "span_start": i, "span_end": i + 5},
            **HTMX,
        )
        for i in range(6)
    ]

    assert [r.status_code for r in answers] == [200, 200, 200, 429, 429, 429]
    for refused in answers[3:]:
        wait = int(refused["Retry-After"])
        assert 1 <= wait <= 60
        assert f"You are going too fast: try again in {wait} s." in refused.content.decode()
        assert refused["HX-Retarget"] == "#errors"
    assert Tag.objects.filter(rater=tagging.conversation.rater).count() == 3
    # Removing counts too (the same limit), and is refused before anything changes.
    tag = Tag.objects.filter(rater=tagging.conversation.rater).first()
    assert tagging.post(reverse("labeling:tag_remove", args=[tag.pk]), **HTMX).status_code == 429
    assert Tag.objects.filter(pk=tag.pk).exists()

    # Another rater is not affected.
    other = Client()
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="Hello")
    a, _ = finish_candidates(user_turn)
    other.force_login(conversation.rater)
    response = other.post(reverse("labeling:tag_add"), {"turn": a.pk, "label": "clarification"}, **HTMX)
    assert response.status_code == 200 and Tag.objects.filter(rater=conversation.rater).count() == 1


@pytest.mark.django_db
def test_messages_and_votes_over_the_limit_are_refused_before_anything_is_written(tagging, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "messages": 1, "votes": 1}
    conversation = tagging.conversation
    reply = tagging.reply
    vote_url = reverse("annotate:vote", args=[conversation.pk])
    vote = {"parent": reply.parent_id, "choice": reply.pk, "idempotency_key": str(uuid.uuid4())}
    assert tagging.post(vote_url, vote, **HTMX).status_code == 200
    send = reverse("annotate:message_send", args=[conversation.pk])
    assert tagging.post(send, {"text": "For ten kids", "client_key": str(uuid.uuid4())}, **HTMX).status_code == 200
    turns = Turn.objects.filter(conversation=conversation).count()

    # A plain form post gets the session page back, with the message and the status.
    again = tagging.post(send, {"text": "And a cake", "client_key": str(uuid.uuid4())})
    assert again.status_code == 429 and "Retry-After" in again
    assert "You are going too fast" in again.content.decode() and 'id="session"' in again.content.decode()
    conversation.refresh_from_db()
    head = selectors.awaiting_vote(conversation)
    a, _ = finish_candidates(head)
    vote = {"parent": head.pk, "choice": a.pk, "idempotency_key": str(uuid.uuid4())}
    refused_vote = tagging.post(vote_url, vote, **HTMX)
    assert refused_vote.status_code == 429 and "Retry-After" in refused_vote
    assert Turn.objects.filter(conversation=conversation).count() == turns
    assert conversation.comparisons.count() == 1


@pytest.mark.django_db
def test_review_votes_over_the_limit_are_refused_into_the_pages_errors(client, make_study, make_user, settings):
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "votes": 0}  # 0: no limit
    study = make_study(scenarios=2, overlap=1, review_overlap=1)
    conversation = finished_conversation(study, make_user())
    assignment = labeling.review_claim(rater=make_user(), study=study)
    client.force_login(assignment.rater)
    url = reverse("labeling:review_vote", args=[assignment.pk])
    parents = [t for t in selectors.lived_path(conversation) if t.role == Turn.Role.USER]
    for parent in parents:
        post = {"parent": parent.pk, "choice": "tie", "idempotency_key": str(uuid.uuid4())}
        assert client.post(url, post, **HTMX).status_code == 200
    settings.RATE_LIMITS = {**settings.RATE_LIMITS, "votes": 1}
    post = {"parent": parents[0].pk, "choice": "all_bad", "idempotency_key": str(uuid.uuid4())}
    assert client.post(url, post, **HTMX).status_code == 200
    refused = client.post(url, {**post, "idempotency_key": str(uuid.uuid4()), "choice": "tie"}, **HTMX)
    assert refused.status_code == 429 and refused["HX-Retarget"] == "#errors" and "Retry-After" in refused
    assert conversation.comparisons.get(parent=parents[0], rater=assignment.rater).choice == "all_bad"


def test_limits_count_in_the_shared_cache_when_one_is_configured(settings):
    """With CACHE_URL=redis://... every web process counts in the same place."""
    url = os.environ.get("REDIS_URL")
    if not url or not url.startswith("redis"):
        pytest.skip("REDIS_URL is not set (make test sets it)")
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url, "KEY_PREFIX": "t"}
    }
    who = uuid.uuid4().hex
    assert [ratelimit.retry_after("test", who, limit=2) for _ in range(2)] == [None, None]
    wait = ratelimit.retry_after("test", who, limit=2)
    assert wait is not None and 1 <= wait <= 60
    assert ratelimit.retry_after("test", uuid.uuid4().hex, limit=2) is None
    assert ratelimit.retry_after("test", who, limit=0) is None


def test_a_refusals_headers_go_out_with_each_kind_of_answer():
    @answers_refusals
    def view(request):
        raise ActionRefused("Slow down.", status=429, headers={"Retry-After": "7"})

    def own_page(request, exc):
        return HttpResponse(exc.message, status=exc.status)

    for htmx in (True, False):
        request = RequestFactory().post("/x/", **(HTMX if htmx else {}))
        request.htmx = HtmxDetails(request)
        for answer in (view(request), answers_refusals(page=own_page)(view.__wrapped__)(request)):
            assert (answer.status_code, answer["Retry-After"]) == (429, "7")


def test_the_client_address_behind_trusted_proxies(settings):
    request = RequestFactory().get("/", REMOTE_ADDR="10.0.0.2", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.9")
    assert client_ip(request) == "10.0.0.2"  # no proxy trusted: a client could write any X-Forwarded-For
    settings.TRUSTED_PROXY_COUNT = 1
    assert client_ip(request) == "203.0.113.9"  # what the one proxy saw, not what the client claimed
    settings.TRUSTED_PROXY_COUNT = 2
    assert client_ip(request) == "6.6.6.6"
    settings.TRUSTED_PROXY_COUNT = 3
    assert client_ip(request) == "10.0.0.2"


# --- a failed generation, as raters and staff see it ------------------------------------------------

DETAIL = "Model server unreachable at http://10.20.30.40:8000/v1: [Errno 111] Connection refused"


@pytest.mark.django_db
def test_raters_see_a_generic_message_for_a_failed_reply_and_staff_the_detail(tagging, make_user):
    conversation = tagging.conversation
    send = reverse("annotate:message_send", args=[conversation.pk])
    choose(conversation, tagging.reply.parent_id, choice="candidate", chosen_id=tagging.reply.pk)
    tagging.post(send, {"text": "For ten kids", "client_key": str(uuid.uuid4())}, **HTMX)
    conversation.refresh_from_db()
    a, b = selectors.candidates_of(selectors.awaiting_vote(conversation))
    Turn.objects.filter(pk=a.pk).update(status=Turn.Status.FAILED, error=DETAIL)
    Turn.objects.filter(pk=b.pk).update(status=Turn.Status.DONE, text="Sure.")

    pages = [
        tagging.get(reverse("annotate:conversation", args=[conversation.pk])).content.decode(),
        tagging.get(reverse("annotate:conversation", args=[conversation.pk]), **HTMX).content.decode(),
    ]
    stream = b"".join(tagging.get(reverse("annotate:stream", args=[conversation.pk]))).decode()
    for shown in [*pages, stream]:
        assert "10.20.30.40" not in shown and "unreachable" not in shown
    for page in pages:
        assert Turn.RATER_ERROR in page and "Retry reply A" in page
    events = [json.loads(line[5:]) for line in stream.splitlines() if line.startswith("data:") and '"id"' in line]
    assert {e["id"]: e["error"] for e in events} == {a.pk: Turn.RATER_ERROR, b.pk: ""}

    staff = Client()
    staff.force_login(make_user(is_staff=True, is_superuser=True))
    assert "10.20.30.40" in staff.get(reverse("admin:annotate_turn_change", args=[a.pk])).content.decode()
