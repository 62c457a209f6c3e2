"""Streams and stuck turns (issue 11): updates reach the streams by Redis pub/sub, so an open stream holds no
database connection; workers coalesce their row writes; the recovery sweep takes up replies whose worker was
lost; a database failure under a generation is retried, never acknowledged with the turn left streaming.

Real parts: PostgreSQL, Redis, uvicorn and Celery workers as child processes, the tiny random model."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import psutil
import pytest
import requests
from django.conf import settings
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from annotate import generation, live, selectors, services
from annotate.models import Conversation, Turn
from core.middleware import RETRY_AFTER_SECONDS
from tests.faults import database_proxy
from tests.processes import wait_until

LONG = 800  # tokens on the tiny model: long enough to be interrupted midway


# Child processes started with PGAPPNAME set are told apart by their connections' application_name.
WEB, WORKER = "cg-web-under-test", "cg-worker-under-test"


def connections_of(application: str) -> int:
    """Connections to the test database opened by processes started with PGAPPNAME=`application`."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            [application],
        )
        return int(cursor.fetchone()[0])


def terminate_connections_of(application: str) -> int:
    """What a PostgreSQL restart does to a process: its connections are cut."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s",
            [application],
        )
        return int(cursor.fetchone()[0])


# --- the worker's side: coalesced writes --------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("with_feed", [False, True], ids=["polling", "feed"])
def test_token_writes_are_coalesced_and_the_finish_writes_the_last_text(with_feed, make_conversation, settings):
    if with_feed and not settings.STREAM_REDIS_URL:
        pytest.skip("needs Redis for the feed (make test provides it)")
    if not with_feed:
        settings.STREAM_REDIS_URL = ""
    settings.STREAM_WRITE_SECONDS, settings.STREAM_SAVE_SECONDS = 0.1, 1.0
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="Hello")
    turn = selectors.candidates_of(user_turn)[0]
    attempt = generation.turn_claim(turn_id=turn.pk)
    assert attempt == 1
    mine = Turn.objects.filter(pk=turn.pk, attempt=attempt, status=Turn.Status.STREAMING)
    on_text = generation._text_writer(mine, turn.pk, attempt)
    words = [f"w{n}" for n in range(200)]
    with _published(turn.pk) as published, CaptureQueriesContext(connection) as writes:
        started = time.monotonic()
        for n in range(len(words)):  # 200 tokens over ~2.5 s
            assert on_text(" ".join(words[: n + 1])) is True
            time.sleep(0.0125)
        elapsed = time.monotonic() - started
    updates = [q for q in writes.captured_queries if q["sql"].startswith("UPDATE")]
    if with_feed:
        # The rater gets the text every 100 ms by pub/sub; the row is saved (and the lease kept) once a second.
        assert len(updates) <= 2 + elapsed / 1.0
        assert elapsed / 0.1 / 2 <= len(published) <= 2 + elapsed / 0.1
        assert published[-1]["text"].startswith("w0 w1") and published[-1]["attempt"] == attempt
    else:
        # The streams poll the row: the first token at once, then at most one write per 100 ms.
        assert elapsed / 0.1 / 2 <= len(updates) <= 2 + elapsed / 0.1
        assert published == []
    stored = Turn.objects.get(pk=turn.pk)
    assert stored.first_token_at is not None and stored.text.startswith("w0")
    from workers.backends import GenerationResult

    assert generation._finish(mine, turn.pk, GenerationResult(text=" ".join(words))) == "done"
    assert Turn.objects.get(pk=turn.pk).text == " ".join(words)  # always the last


@contextlib.contextmanager
def _published(turn_id: int) -> Iterator[list[dict[str, Any]]]:
    """The states of this turn published on the feed's channel while the block runs (a real subscription)."""
    states: list[dict[str, Any]] = []
    if not settings.STREAM_REDIS_URL:
        yield states
        return
    import redis

    client = redis.Redis.from_url(settings.STREAM_REDIS_URL)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(live.channel())
    pubsub.get_message(timeout=1.0)  # the subscription's confirmation
    try:
        yield states
        time.sleep(0.2)
        while (message := pubsub.get_message(timeout=0.5)) is not None:
            state = json.loads(message["data"])
            if state["id"] == turn_id:
                states.append(state)
    finally:
        pubsub.close()
        client.close()


# --- the recovery sweep ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_sweep_takes_up_lost_replies_and_resends_forgotten_ones(
    make_conversation, settings, django_capture_on_commit_callbacks
):
    settings.TURN_LEASE_SECONDS, settings.PENDING_REQUEUE_SECONDS, settings.TURN_MAX_CRASHES = 60, 300, 3
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="Hello")
    lost, fresh = selectors.candidates_of(user_turn)
    user_turn2 = Turn.objects.create(
        conversation=conversation, parent=lost, role="user", depth=2, position=0, text="More", status="done"
    )
    forgotten = Turn.objects.create(
        conversation=conversation,
        parent=user_turn2,
        role="assistant",
        depth=3,
        position=0,
        model_config=lost.model_config,
    )
    crashed = Turn.objects.create(
        conversation=conversation,
        parent=user_turn2,
        role="assistant",
        depth=3,
        position=1,
        model_config=lost.model_config,
    )
    now = timezone.now()
    old = now - timezone.timedelta(seconds=120)
    Turn.objects.filter(pk=lost.pk).update(status="streaming", attempt=1, heartbeat_at=old, text="half a rep")
    Turn.objects.filter(pk=fresh.pk).update(status="streaming", attempt=1, heartbeat_at=now)  # a live lease
    Turn.objects.filter(pk=crashed.pk).update(status="streaming", attempt=3, heartbeat_at=old)
    Turn.objects.filter(pk=forgotten.pk).update(status="pending", created_at=now - timezone.timedelta(seconds=400))

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        counts = services.turns_recover(now=now)
    assert counts == {"failed": 1, "requeued": 1, "resent": 1}
    assert len(callbacks) == 1  # the tasks go out once the sweep committed
    states = {t.pk: (t.status, t.text, t.attempt) for t in Turn.objects.filter(role="assistant")}
    assert states[lost.pk] == ("pending", "", 1)  # its next claim is attempt 2: the page says "started again"
    assert states[fresh.pk] == ("streaming", "", 1)
    assert states[crashed.pk][0] == "failed" and "stopped 3 times" in Turn.objects.get(pk=crashed.pk).error
    assert states[forgotten.pk][0] == "pending"
    # A second sweep right after sends nothing again: the sent ones wait another lease / requeue period
    with django_capture_on_commit_callbacks(execute=False):
        assert services.turns_recover(now=now + timezone.timedelta(seconds=15)) == {
            "failed": 0,
            "requeued": 0,
            "resent": 0,
        }


# --- streams: pub/sub, no connection held, keep-alives -----------------------------------------------


def _sse_reader(url: str, cookies: dict[str, str], events: list[dict[str, Any]], comments: list[float]) -> None:
    with requests.get(url, cookies=cookies, stream=True, timeout=60) as response:
        response.raise_for_status()
        event = ""
        for raw in response.iter_lines(decode_unicode=True):
            if raw.startswith(":"):
                comments.append(time.monotonic())
            elif raw.startswith("event:"):
                event = raw[6:].strip()
            elif raw.startswith("data:"):
                events.append({"event": event, **json.loads(raw[5:])})
                if event == "end":
                    return


@pytest.fixture
def streaming_session(start_server: Any, make_conversation: Any, make_user: Any) -> Iterator[dict[str, Any]]:
    rater = make_user("streamer")
    conversation: Conversation = make_conversation(rater=rater)
    user_turn = services.message_send(conversation=conversation, text="Hello there")
    client = Client()
    client.force_login(rater)
    base = start_server(STREAM_KEEPALIVE_SECONDS="0.5", DB_POOL="0", PGAPPNAME=WEB)
    yield {
        "url": f"{base}{reverse('annotate:stream', args=[conversation.pk])}",
        "cookies": {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value},
        "turns": selectors.candidates_of(user_turn),
    }


@pytest.mark.skipif(not settings.STREAM_REDIS_URL, reason="needs Redis for the feed (make test provides it)")
def test_open_streams_hold_no_database_connection_and_get_every_update_by_pub_sub(streaming_session):
    session = streaming_session
    readers = []
    for _ in range(20):
        events: list[dict[str, Any]] = []
        comments: list[float] = []
        thread = threading.Thread(
            target=_sse_reader, args=(session["url"], session["cookies"], events, comments), daemon=True
        )
        thread.start()
        readers.append((thread, events, comments))
    # Each stream sent the rows' state first (pending), then waits
    wait_until(lambda: all(len(events) >= 2 for _, events, _ in readers), timeout=30, what="first states")
    wait_until(lambda: all(comments for _, _, comments in readers), timeout=10, what="keep-alives")
    # 20 open streams, and the web process holds at most its one idle connection (not one per stream)
    assert connections_of(WEB) <= 1

    # A worker's writes reach every stream at once, by pub/sub (no polling: a resync waits 30 s)
    a, b = session["turns"]
    for turn in (a, b):
        attempt = generation.turn_claim(turn_id=turn.pk)
        mine = Turn.objects.filter(pk=turn.pk, attempt=attempt, status=Turn.Status.STREAMING)
        on_text = generation._text_writer(mine, turn.pk, attempt)
        on_text("Which kind")
    # The last words of an attempt that was taken over (it learns so only at its next save) are not shown
    live.publish(live.turn_state(id=a.pk, status="streaming", text="Stale words", heartbeat_at=None, attempt=0))
    started = time.monotonic()
    generation._finish(
        Turn.objects.filter(pk=a.pk, status="streaming"), a.pk, _result("Which kind of party do you mean?")
    )
    generation._fail(Turn.objects.filter(pk=b.pk, status="streaming"), b.pk, "Model server unreachable at http://x:1")
    for thread, _, _ in readers:
        thread.join(timeout=10)
    assert time.monotonic() - started < 10
    for thread, events, _ in readers:
        assert not thread.is_alive()
        final = {e["id"]: e for e in events if e["event"] == "turn"}
        assert final[a.pk]["status"] == "done" and final[a.pk]["text"] == "Which kind of party do you mean?"
        assert final[b.pk]["status"] == "failed" and final[b.pk]["error"] == Turn.RATER_ERROR  # not the URL
        assert events[-1]["event"] == "end"
        assert any(e["event"] == "turn" and e["text"] == "Which kind" for e in events)
        assert not any(e["event"] == "turn" and e["text"] == "Stale words" for e in events)


@pytest.mark.parametrize("with_feed", [False, True], ids=["polling", "feed"])
def test_a_stream_that_loses_the_database_ends_cleanly_and_resumes_when_it_is_back(
    with_feed, start_server, make_conversation, make_user, tmp_path
):
    if with_feed and not settings.STREAM_REDIS_URL:
        pytest.skip("needs Redis for the feed (make test provides it)")
    rater = make_user("streamer")
    conversation = make_conversation(rater=rater)
    a, b = selectors.candidates_of(services.message_send(conversation=conversation, text="Hello there"))
    client = Client()
    client.force_login(rater)
    cookies = {settings.SESSION_COOKIE_NAME: client.cookies[settings.SESSION_COOKIE_NAME].value}
    proxy, through_proxy = database_proxy()  # the web server's way to the database
    try:
        feed = {} if with_feed else {"STREAM_REDIS_URL": ""}
        base = start_server(DATABASE_URL=through_proxy, DB_POOL="0", STREAM_QUEUE_SECONDS="0.3", **feed)
        url = f"{base}{reverse('annotate:stream', args=[conversation.pk])}"
        with requests.get(url, cookies=cookies, stream=True, timeout=30) as response:
            response.raise_for_status()
            lines = response.iter_lines(decode_unicode=True)
            before = [line for line, _ in zip(lines, range(6), strict=False)]  # retry, then two turn events
            assert sum(line == "event: turn" for line in before) == 2
            # The database goes away under the open stream: its next read fails
            proxy.cut()
            after = list(lines)  # the response ends: no ChunkedEncodingError (an aborted chunked body)
        assert after[-2:] == [f"retry: {RETRY_AFTER_SECONDS * 1000}", ""]  # reconnect later, as a 503 would say
        assert "event: end" not in after
        log = (tmp_path / "web.log").read_text()
        assert "ended early, the database is unavailable" in log and "Exception in ASGI application" not in log

        # A stream opened while the database is away is refused as busy (session.js tries again after 5 s)
        refused = requests.get(url, cookies=cookies, timeout=30)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)

        # Back: the stream starts from the rows and follows the replies to their end
        proxy.resume()
        events: list[dict[str, Any]] = []
        reader = threading.Thread(target=_sse_reader, args=(url, cookies, events, []), daemon=True)
        reader.start()
        wait_until(lambda: len(events) >= 2, timeout=30, what="the current states again")
        for turn in (a, b):
            assert generation.turn_claim(turn_id=turn.pk) is not None
            generation._finish(Turn.objects.filter(pk=turn.pk, status="streaming"), turn.pk, _result("Which one?"))
        reader.join(timeout=20)
        assert events[-1]["event"] == "end"
        assert {e["id"]: e["status"] for e in events if e["event"] == "turn"} == {a.pk: "done", b.pk: "done"}
    finally:
        proxy.close()


def _result(text: str) -> Any:
    from workers.backends import GenerationResult

    return GenerationResult(text=text)


# --- a worker that loses the database, or a whole node --------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_database_failure_under_a_generation_is_retried_and_the_turn_finishes(
    start_worker, tiny_config, make_study, make_conversation
):
    conversation = make_conversation(
        study=make_study(configs=[tiny_config(max_new_tokens=LONG, min_new_tokens=LONG)], candidates_per_turn=1)
    )
    # Without the pool: with it, the worker's next write would take a fresh connection and never notice
    worker = start_worker(concurrency=1, DB_POOL="0", PGAPPNAME=WORKER)
    user_turn = services.message_send(conversation=conversation, text="Tell me a long story")
    turn_id = Turn.objects.get(parent=user_turn).pk
    wait_until(lambda: Turn.objects.filter(pk=turn_id, status="streaming").exclude(text="").exists(), what="streaming")

    # When the database cuts the worker's connections mid-generation (as a restart does)
    assert terminate_connections_of(WORKER) >= 1

    # Then the task retries (not acknowledged with the turn streaming) and the reply is finished
    turn = wait_until(lambda: Turn.objects.filter(pk=turn_id, status__in=["done", "failed"]).first(), what="finished")
    assert (turn.status, turn.error) == ("done", "")
    assert turn.attempt == 2 and turn.completion_tokens == LONG
    assert "Retry in" in worker.output()


@pytest.mark.django_db(transaction=True)
def test_a_lost_worker_node_is_taken_over_within_the_lease_not_the_visibility_timeout(
    start_worker, settings, tiny_config, make_study, make_conversation
):
    settings.TURN_LEASE_SECONDS = 3  # the broker's visibility timeout stays at 900 s
    conversation = make_conversation(
        study=make_study(configs=[tiny_config(max_new_tokens=LONG, min_new_tokens=LONG)], candidates_per_turn=1)
    )
    first = start_worker(concurrency=1)
    user_turn = services.message_send(conversation=conversation, text="Tell me a long story")
    turn_id = Turn.objects.get(parent=user_turn).pk
    wait_until(lambda: Turn.objects.filter(pk=turn_id, status="streaming").exclude(text="").exists(), what="streaming")
    # When the whole node goes (main and pool processes, SIGKILL: no word to the broker)
    victims = {first.proc.pid, *(child.pid for child in psutil.Process(first.proc.pid).children())}
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=10)
    wait_until(lambda: not any(psutil.pid_exists(pid) for pid in victims), timeout=10, what="node gone")
    killed_at = time.monotonic()
    start_worker(concurrency=1)

    # Then the sweep (beat's job; run here) finds the lease run out and hands the turn to the new worker
    def swept() -> bool:
        return services.turns_recover()["requeued"] == 1

    wait_until(swept, timeout=20, every=0.5, what="the sweep took the turn up")
    turn = wait_until(lambda: Turn.objects.filter(pk=turn_id, status__in=["done", "failed"]).first(), what="finished")
    assert (turn.status, turn.attempt, turn.completion_tokens) == ("done", 2, LONG)
    assert time.monotonic() - killed_at < 120  # the lease and a sweep, plus the generation: never 900 s


@pytest.mark.django_db
def test_a_waiting_reply_is_told_its_place_in_the_queue(make_conversation):
    earlier = services.message_send(conversation=make_conversation(), text="First in the queue")
    later = services.message_send(conversation=make_conversation(), text="Second")
    first_two = [t.pk for t in selectors.candidates_of(earlier)]
    mine = [t.pk for t in selectors.candidates_of(later)]
    states = {s["id"]: s for s in live._states_read(mine, release=False)}
    assert [states[pk]["ahead"] for pk in mine] == [2, 3]  # the other rater's two replies, then A before B
    Turn.objects.filter(pk__in=first_two).update(status="streaming")  # a worker took them
    states = {s["id"]: s for s in live._states_read(mine, release=False)}
    assert [states[pk]["ahead"] for pk in mine] == [0, 1]
    Turn.objects.filter(pk__in=mine).update(status="streaming")
    assert {s["ahead"] for s in live._states_read(mine, release=False)} == {None}  # only waiting replies have one
