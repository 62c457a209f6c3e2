"""Handing out scenarios under real concurrency (PostgreSQL, many threads and processes), expiry of idle
conversations, the rater quota, excluded participants, and the admin's progress per scenario.

The rules are in docs/assignment.md. Threads each have their own database connection
(tests/concurrency.py), so these tests take `transactional_db`.
"""

from __future__ import annotations

import sys
import uuid
from collections import Counter
from datetime import timedelta
from io import StringIO

import pytest
import requests
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from annotate import selectors, services
from annotate.models import Conversation, Participant, Scenario
from annotate.tasks import expire_conversations_task
from core.errors import ActionRefused
from tests.concurrency import in_parallel
from tests.helpers import HTMX, child_env
from tests.processes import ChildProcess, free_port
from workers.celery_app import BEAT_SCHEDULE, app, worker_argv

ACTIVE, COMPLETED, EXPIRED = Conversation.Status.ACTIVE, Conversation.Status.COMPLETED, Conversation.Status.EXPIRED


def _finish(conversation: Conversation) -> Conversation:
    return services.conversation_finish(conversation=conversation, goal="yes", understanding=4)


def _idle(conversation: Conversation, minutes: float) -> None:
    """Make the conversation's last activity `minutes` ago."""
    Conversation.objects.filter(pk=conversation.pk).update(last_activity_at=timezone.now() - timedelta(minutes=minutes))


def _per_scenario(study, statuses=(ACTIVE, COMPLETED)) -> Counter[int]:
    rows = Conversation.objects.filter(study=study, status__in=statuses).values_list("scenario_id", flat=True)
    return Counter(rows)


def _no_rater_twice_on_a_scenario(study) -> None:
    pairs = Counter(Conversation.objects.filter(study=study).values_list("rater_id", "scenario_id"))
    assert max(pairs.values()) == 1, pairs


# --- concurrency, at the service level --------------------------------------------------------


def test_one_rater_starting_eight_times_at_once_gets_one_conversation(transactional_db, make_study, make_user):
    study = make_study(scenarios=5, overlap=3)
    rater = make_user()

    outcomes = in_parallel(8, lambda _: services.conversation_start(study=study, rater=rater).pk)

    assert [o.error for o in outcomes] == [None] * 8
    assert len({o.value for o in outcomes}) == 1
    assert Conversation.objects.filter(study=study, rater=rater).count() == 1
    assert Conversation.objects.get().status == ACTIVE


def test_twelve_raters_racing_for_three_scenarios_fill_each_exactly_k_times(transactional_db, make_study, make_user):
    study = make_study(scenarios=3, overlap=2)
    raters = [make_user() for _ in range(12)]

    outcomes = in_parallel(12, lambda i: services.conversation_start(study=study, rater=raters[i]).pk)

    started = [o for o in outcomes if o.error is None]
    refused = [o.error for o in outcomes if o.error is not None]
    assert len(started) == 6 and len(refused) == 6
    assert all(isinstance(e, ActionRefused) and e.status == 409 for e in refused), refused
    assert all("no scenarios left" in e.message for e in refused if isinstance(e, ActionRefused))
    assert _per_scenario(study) == {s.pk: 2 for s in study.scenarios.all()}
    _no_rater_twice_on_a_scenario(study)


def test_raters_working_through_a_study_at_once_give_every_scenario_exactly_k(transactional_db, make_study, make_user):
    """Six raters start, finish and start again until refused, all at once: 4 scenarios × overlap 3."""
    study = make_study(scenarios=4, overlap=3)
    raters = [make_user() for _ in range(6)]

    def work(i: int) -> int:
        done = 0
        while True:
            try:
                conversation = services.conversation_start(study=study, rater=raters[i])
            except ActionRefused as exc:
                assert exc.status == 409 and "no scenarios left" in exc.message
                return done
            _finish(conversation)
            done += 1

    outcomes = in_parallel(6, work)

    assert [o.error for o in outcomes] == [None] * 6
    assert sum(o.value for o in outcomes) == 12
    assert _per_scenario(study, statuses=(COMPLETED,)) == {s.pk: 3 for s in study.scenarios.all()}
    assert not Conversation.objects.filter(study=study).exclude(status=COMPLETED).exists()
    _no_rater_twice_on_a_scenario(study)


def test_an_integrity_error_on_insert_returns_the_active_conversation(make_study, make_user, monkeypatch):
    study = make_study(scenarios=3)
    rater = make_user()
    existing = services.conversation_start(study=study, rater=rater)
    calls = []

    def resumed_once_missed(study, rater):
        # The first look (before the lock) missed it, as a concurrent writer had not committed yet.
        calls.append(1)
        return None if len(calls) == 1 else original(study, rater)

    original = services._active_resumed
    monkeypatch.setattr(services, "_active_resumed", resumed_once_missed)
    monkeypatch.setattr(
        services,
        "_conversation_assign",
        lambda study, rater: Conversation.objects.create(study=study, scenario=study.scenarios.last(), rater=rater),
    )

    assert services.conversation_start(study=study, rater=rater).pk == existing.pk
    assert Conversation.objects.filter(study=study, rater=rater).count() == 1


# --- concurrency, through HTTP ----------------------------------------------------------------


def _logged_in_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def test_parallel_start_posts_through_django(transactional_db, make_study, make_user):
    """The start view from many threads (Django's test client, one per thread): one rater × 8 posts all land
    on the same conversation; 8 raters racing for 2 scenarios × overlap 2 leave 4 clean 409s."""
    study = make_study(scenarios=2, overlap=2)
    url = reverse("annotate:study_start", args=[study.slug])
    one = make_user()
    clients = [_logged_in_client(one) for _ in range(8)]

    responses = [o.value for o in in_parallel(8, lambda i: clients[i].post(url))]

    assert {r.status_code for r in responses} == {302}
    assert len({r["Location"] for r in responses}) == 1
    assert Conversation.objects.filter(study=study, rater=one).count() == 1

    others = [_logged_in_client(make_user()) for _ in range(8)]
    responses = [o.value for o in in_parallel(8, lambda i: others[i].post(url))]

    assert Counter(r.status_code for r in responses) == {302: 3, 409: 5}  # one place was taken by `one`
    assert all("no scenarios left" in r.content.decode() for r in responses if r.status_code == 409)
    assert _per_scenario(study) == {s.pk: 2 for s in study.scenarios.all()}
    _no_rater_twice_on_a_scenario(study)


@pytest.fixture
def web_server(transactional_db, tmp_path):
    """The real ASGI server with four processes (uvicorn --workers 4), so posts really run side by side."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "4", "--no-access-log"]  # fmt: skip
    child = ChildProcess("web", argv, child_env(), tmp_path)
    try:
        child.wait_for("Application startup complete", timeout=90)
        yield f"http://127.0.0.1:{port}"
    finally:
        child.stop()


def _session_for(base_url: str, user) -> dict[str, str]:
    """Cookies of a logged-in session on the real server (session in the database, CSRF token from a page)."""
    client = Client()
    client.force_login(user)
    cookies = {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}
    page = requests.get(f"{base_url}/", cookies=cookies, timeout=30)
    assert page.status_code == 200
    return {**cookies, settings.CSRF_COOKIE_NAME: page.cookies[settings.CSRF_COOKIE_NAME]}


def test_parallel_start_posts_on_the_real_server(web_server, make_study, make_user):
    """The measured cases: 8 parallel starts of one rater (gave 3 active conversations), and 6 raters racing
    for one scenario with overlap 1 (gave 5 conversations on it)."""
    study = make_study(scenarios=1, overlap=1)
    url = f"{web_server}/studies/{study.slug}/start/"

    def post(cookies: dict[str, str]) -> requests.Response:
        data = {"csrfmiddlewaretoken": cookies[settings.CSRF_COOKIE_NAME]}
        return requests.post(url, data=data, cookies=cookies, allow_redirects=False, timeout=60)

    one = _session_for(web_server, make_user())
    responses = [o.value for o in in_parallel(8, lambda _: post(one))]
    assert {r.status_code for r in responses} == {302}, [r.text[:300] for r in responses]
    assert len({r.headers["Location"] for r in responses}) == 1
    assert Conversation.objects.filter(study=study).count() == 1

    study.scenarios.create(external_id="second", title="Second", brief="Another brief")
    sessions = [_session_for(web_server, make_user()) for _ in range(6)]
    responses = [o.value for o in in_parallel(6, lambda i: post(sessions[i]))]
    assert Counter(r.status_code for r in responses) == {302: 1, 409: 5}, [r.text[:300] for r in responses]
    assert _per_scenario(study) == {s.pk: 1 for s in study.scenarios.all()}


# --- expiry -------------------------------------------------------------------------------------


def test_the_sweeper_expires_idle_conversations_and_hands_their_scenario_on(make_study, make_user, client):
    study = make_study(scenarios=2, overlap=1, assignment_timeout_minutes=30)
    alice, bob, carol = make_user(), make_user(), make_user()
    idle = services.conversation_start(study=study, rater=alice)
    busy = services.conversation_start(study=study, rater=bob)
    with pytest.raises(ActionRefused, match="no scenarios left"):
        services.conversation_start(study=study, rater=carol)
    _idle(idle, 31)
    _idle(busy, 29)

    assert services.conversations_expire() == 1

    idle.refresh_from_db()
    busy.refresh_from_db()
    assert idle.status == EXPIRED and idle.ended_at is not None
    assert busy.status == ACTIVE and busy.ended_at is None
    assert services.conversation_start(study=study, rater=carol).scenario_id == idle.scenario_id
    assert services.conversations_expire() == 0  # nothing twice

    # Alice is told, wherever she turns.
    client.force_login(alice)
    post = {"text": "hello", "client_key": str(uuid.uuid4())}
    response = client.post(reverse("annotate:message_send", args=[idle.pk]), post)
    assert response.status_code == 409 and "This conversation has expired" in response.content.decode()
    post["client_key"] = str(uuid.uuid4())
    response = client.post(reverse("annotate:message_send", args=[idle.pk]), post, **HTMX)
    assert response.status_code == 409 and "This conversation has expired" in response.content.decode()
    with pytest.raises(ActionRefused, match="This conversation has expired") as refused:
        services.message_send(conversation=idle, text="hello")
    assert refused.value.status == 409
    with pytest.raises(ActionRefused, match="This conversation has expired"):
        services.conversation_finish(conversation=idle, goal="yes", understanding=3)
    page = client.get(reverse("annotate:conversation", args=[idle.pk]), follow=True)
    assert "This conversation has expired" in page.content.decode() and "30 minutes" in page.content.decode()
    fragment = client.get(reverse("annotate:conversation", args=[idle.pk]), **HTMX)
    assert fragment.status_code == 409 and "This conversation has expired" in fragment.content.decode()
    # ... and she never gets that scenario again (the other one is taken: nothing left for her).
    with pytest.raises(ActionRefused, match="no scenarios left"):
        services.conversation_start(study=study, rater=alice)


def test_a_start_expires_idle_conversations_itself(make_study, make_user):
    """No sweeper ran: the next start expires the study's idle conversations before counting."""
    study = make_study(scenarios=1, overlap=1, assignment_timeout_minutes=10)
    first = services.conversation_start(study=study, rater=make_user())
    _idle(first, 11)

    second = services.conversation_start(study=study, rater=make_user())

    first.refresh_from_db()
    assert first.status == EXPIRED and second.scenario_id == first.scenario_id


def test_a_rater_coming_back_before_any_expiry_resumes(make_study, make_user):
    """Overdue but not yet expired (no sweep, no other start): the conversation still holds its place, so its
    rater resumes it, and coming back counts as activity."""
    study = make_study(scenarios=1, overlap=1, assignment_timeout_minutes=10)
    rater = make_user()
    conversation = services.conversation_start(study=study, rater=rater)
    _idle(conversation, 11)

    assert services.conversation_start(study=study, rater=rater).pk == conversation.pk
    assert services.conversations_expire() == 0


def test_activity_keeps_a_conversation_alive(make_study, make_user):
    from tests.helpers import choose, finish_candidates

    study = make_study(scenarios=1, assignment_timeout_minutes=10)
    conversation = services.conversation_start(study=study, rater=make_user())
    assert conversation.last_activity_at is not None
    _idle(conversation, 11)
    user_turn = services.message_send(conversation=conversation, text="hi")
    assert services.conversations_expire() == 0
    _idle(conversation, 11)
    a, _ = finish_candidates(user_turn)
    choose(conversation, user_turn.pk, choice="candidate", chosen_id=a.pk)
    assert services.conversations_expire() == 0
    _idle(conversation, 11)
    assert services.conversations_expire() == 1


def test_a_timeout_of_zero_never_expires_and_old_rows_count_from_their_start(make_study, make_user):
    never = make_study(scenarios=1, assignment_timeout_minutes=0)
    kept = services.conversation_start(study=never, rater=make_user())
    Conversation.objects.filter(pk=kept.pk).update(last_activity_at=timezone.now() - timedelta(days=30))
    study = make_study(scenarios=1, assignment_timeout_minutes=5)
    old = services.conversation_start(study=study, rater=make_user())
    Conversation.objects.filter(pk=old.pk).update(
        last_activity_at=None, started_at=timezone.now() - timedelta(minutes=6)
    )

    assert services.conversations_expire() == 1
    assert Conversation.objects.get(pk=kept.pk).status == ACTIVE
    assert Conversation.objects.get(pk=old.pk).status == EXPIRED


def test_the_sweep_is_a_routed_periodic_task_and_a_command(make_study, make_user):
    study = make_study(scenarios=2, assignment_timeout_minutes=5)
    _idle(services.conversation_start(study=study, rater=make_user()), 6)

    assert expire_conversations_task.apply().get() == 1

    _idle(services.conversation_start(study=study, rater=make_user()), 6)
    out = StringIO()
    call_command("expire_conversations", stdout=out)
    assert "Expired 1 conversation(s) and 0 review assignment(s)." in out.getvalue()
    # Beat sends both expiry sweeps every minute and the recovery sweep every 15 s, to the light queue; serve's
    # side worker embeds beat, tests' do not.
    every = {entry["task"]: entry["schedule"] for entry in BEAT_SCHEDULE.values()}
    assert every == {
        "annotate.tasks.expire_conversations_task": 60,
        "labeling.tasks.expire_reviews_task": 60,
        "annotate.tasks.recover_turns_task": 15,
    }
    tasks = set(every)
    assert app.conf.beat_schedule == BEAT_SCHEDULE
    for task in tasks:
        assert app.conf.task_routes[task] == {"queue": "suggestions"}
    assert "-B" in worker_argv(concurrency=1, beat=True) and "-B" not in worker_argv(concurrency=1)


def test_the_sweep_and_starts_at_once_never_over_assign(transactional_db, make_study, make_user):
    """Sweeps racing with starts: every idle conversation expires once, and the freed places go to exactly
    as many new raters."""
    study = make_study(scenarios=3, overlap=2, assignment_timeout_minutes=10)
    for _ in range(6):
        _idle(services.conversation_start(study=study, rater=make_user()), 11)
    newcomers = [make_user() for _ in range(8)]

    def act(i: int) -> object:
        if i < 4:
            return services.conversations_expire()
        return services.conversation_start(study=study, rater=newcomers[i - 4]).pk

    outcomes = in_parallel(8, act)

    assert [o.error for o in outcomes] == [None] * 8
    assert sum(o.value for o in outcomes[:4]) <= 6  # the sweeps, and the starts' own expiry: each row once
    assert Conversation.objects.filter(study=study, status=EXPIRED).count() == 6
    # A start waits for a sweep holding the rows, so it counts the places the sweep freed: all four get one.
    assert Conversation.objects.filter(study=study, status=ACTIVE, rater__in=newcomers).count() == 4
    assert all(n <= 2 for n in _per_scenario(study).values())
    _no_rater_twice_on_a_scenario(study)


# --- quota and exclusion ----------------------------------------------------------------------


def test_the_quota_counts_completed_conversations_not_expired_ones(make_study, make_user):
    study = make_study(scenarios=4, conversations_per_rater=2, assignment_timeout_minutes=10)
    rater = make_user()
    _finish(services.conversation_start(study=study, rater=rater))
    expired = services.conversation_start(study=study, rater=rater)
    _idle(expired, 11)
    services.conversations_expire()
    _finish(services.conversation_start(study=study, rater=rater))  # the expired one did not count

    with pytest.raises(ActionRefused, match="You have done the 2 conversations this study asks") as refused:
        services.conversation_start(study=study, rater=rater)
    assert refused.value.status == 409


def test_parallel_starts_never_pass_the_quota(transactional_db, make_study, make_user):
    study = make_study(scenarios=6, overlap=6, conversations_per_rater=2)
    rater = make_user()
    _finish(services.conversation_start(study=study, rater=rater))

    def work(_: int) -> int:
        finished = 0
        while True:
            try:
                _finish(services.conversation_start(study=study, rater=rater))
            except ActionRefused as exc:
                assert exc.status == 409 and "You have done the 2 conversations" in exc.message
                return finished
            finished += 1

    outcomes = in_parallel(6, work)

    assert [o.error for o in outcomes] == [None] * 6
    assert Conversation.objects.filter(study=study, rater=rater, status=COMPLETED).count() == 2
    assert not Conversation.objects.filter(study=study, rater=rater).exclude(status=COMPLETED).exists()


def test_an_excluded_participant_gets_no_new_work(make_study, make_user, client):
    study = make_study(scenarios=3)
    rater = make_user()
    Participant.objects.create(study=study, user=rater, excluded=True, exclusion_reason="bot")

    with pytest.raises(ActionRefused, match="Your work in this study has ended") as refused:
        services.conversation_start(study=study, rater=rater)
    assert refused.value.status == 409
    client.force_login(rater)
    response = client.post(reverse("annotate:study_start", args=[study.slug]))
    assert response.status_code == 409 and "Your work in this study has ended" in response.content.decode()
    assert not Conversation.objects.filter(rater=rater).exists()


# --- what counts towards the overlap ------------------------------------------------------------


def test_expired_and_abandoned_conversations_give_their_place_back(make_study, make_user):
    study = make_study(scenarios=1, overlap=2)
    first, second = make_user(), make_user()
    c1 = services.conversation_start(study=study, rater=first)
    c2 = services.conversation_start(study=study, rater=second)
    Conversation.objects.filter(pk=c1.pk).update(status=EXPIRED)
    Conversation.objects.filter(pk=c2.pk).update(status=Conversation.Status.ABANDONED)

    third = services.conversation_start(study=study, rater=make_user())
    fourth = services.conversation_start(study=study, rater=make_user())
    assert third.scenario_id == fourth.scenario_id == c1.scenario_id
    with pytest.raises(ActionRefused):
        services.conversation_start(study=study, rater=make_user())
    with pytest.raises(ActionRefused):  # a rater never gets a scenario back, even one that expired
        services.conversation_start(study=study, rater=first)


# --- admin: progress per scenario ---------------------------------------------------------------


def test_admin_shows_progress_per_scenario_in_a_few_queries(
    client, make_user, make_study, django_assert_max_num_queries
):
    study = make_study(scenarios=3, overlap=3, assignment_timeout_minutes=10)
    scenario = study.scenarios.order_by("pk").first()
    done = services.conversation_start(study=study, rater=make_user())
    _finish(done)
    services.conversation_start(study=study, rater=make_user())  # active
    _idle(services.conversation_start(study=study, rater=make_user()), 11)
    services.conversations_expire()
    counts = selectors.scenario_progress(Scenario.objects.filter(study=study)).get(pk=scenario.pk)
    first_three = Conversation.objects.filter(study=study).values_list("scenario_id", flat=True)
    assert set(first_three) == {s.pk for s in study.scenarios.all()}  # least used first: one each
    assert counts.n_assigned + counts.n_expired == 1
    totals = {
        key: sum(getattr(s, key) for s in selectors.scenario_progress(Scenario.objects.filter(study=study)))
        for key in ("n_assigned", "n_active", "n_completed", "n_expired")
    }
    assert totals == {"n_assigned": 2, "n_active": 1, "n_completed": 1, "n_expired": 1}

    client.force_login(make_user(is_staff=True, is_superuser=True))
    with django_assert_max_num_queries(20):
        page = client.get(reverse("admin:annotate_study_change", args=[study.pk])).content.decode()
    # One "Assignment" column on the study page (four made its rows too wide for a laptop screen)
    assert "Assignment" in page and "active · " in page and " expired" in page
    assert "1 / 3 assigned" in page and "0 / 3 assigned" in page
    with django_assert_max_num_queries(12):
        listing = client.get(reverse("admin:annotate_scenario_changelist") + f"?study__id__exact={study.pk}")
    assert listing.status_code == 200 and "Assigned / overlap" in listing.content.decode()
