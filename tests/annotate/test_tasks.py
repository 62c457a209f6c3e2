"""A real Celery worker (Redis broker) samples the candidates of a user message."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from annotate import services
from annotate.models import Turn
from tests.processes import wait_until


def test_message_is_sampled_by_a_real_worker(start_worker, tiny_config, make_study, make_conversation):
    # Given a study whose pool is a tiny local model, and a worker on Redis
    config_a, config_b = (
        tiny_config(max_new_tokens=24, min_new_tokens=24),
        tiny_config(max_new_tokens=12, min_new_tokens=4),
    )
    study = make_study(configs=[config_a, config_b])
    conversation = make_conversation(study=study)
    start_worker(concurrency=2)

    # When the rater sends a message
    user_turn = services.message_send(conversation=conversation, text="Hello there")

    # Then both candidates are generated, once each, with what was used recorded
    candidates = Turn.objects.filter(parent=user_turn).order_by("position")
    wait_until(lambda: all(t.status == Turn.Status.DONE for t in candidates.all()))
    for turn in candidates:
        assert turn.attempt == 1
        assert turn.completion_tokens and turn.completion_tokens <= turn.params["max_new_tokens"]
        assert turn.prompt_tokens and turn.prompt_tokens > len("Hello there")
        assert turn.first_token_at is not None and turn.finished_at >= turn.first_token_at
        assert turn.seed is not None
    assert {t.model_config_id for t in candidates} == {config_a.pk, config_b.pk}


def test_replies_waiting_for_one_model_are_sampled_in_one_batch(start_worker, tiny_config, make_study, make_user):
    """Dynamic batching: one task claims the other waiting replies of the same model and parameters (across
    raters) and samples them together; their own tasks find them taken and do nothing."""
    config = tiny_config(max_new_tokens=300, min_new_tokens=300, temperature=0)
    study = make_study(configs=[config], candidates_per_turn=4)
    conversations = [services.conversation_start(study=study, rater=make_user()) for _ in range(2)]
    user_turns = [services.message_send(conversation=c, text="Hello there") for c in conversations]
    start_worker(concurrency=1)  # one process: whatever it takes first, the rest ride along

    replies = Turn.objects.filter(parent__in=user_turns)
    wait_until(lambda: all(t.status == Turn.Status.DONE for t in replies.all()), timeout=180, what="all done")
    rows = list(replies)
    riders = [t for t in rows if " in the batch of turn " in t.claimed_by]
    assert len(riders) == 7  # 8 replies, the batch limit: one task sampled them all
    assert {t.attempt for t in rows} == {1}
    # Greedy and the same prompt: every reply the same text, each with its own streamed row
    assert len({t.text for t in rows}) == 1 and all(t.completion_tokens == 300 for t in rows)
    assert all(t.first_token_at is not None for t in rows)


# --- model servers: their own queue, many at once on threads, few connections ----------------------------


class SlowModelServer:
    """An OpenAI-compatible server that streams ten words 0.1 s apart (1 s a reply), many replies at once."""

    def __init__(self) -> None:
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for n in range(10):
                    time.sleep(0.1)
                    event = {"choices": [{"index": 0, "delta": {"content": f" word{n}"}}]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


IO_WORKER = "cg-io-worker-under-test"  # its connections' application_name (PGAPPNAME)


def _worker_connections() -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            [IO_WORKER],
        )
        return int(cursor.fetchone()[0])


def test_model_server_replies_go_to_their_own_queue(
    make_config, make_study, make_user, broker_url, django_capture_on_commit_callbacks
):
    import redis

    server = make_config(backend="openai", base_url="http://127.0.0.1:9/v1", model_path="m")
    local = make_config()
    study = make_study(configs=[server, local], candidates_per_turn=2)
    conversation = services.conversation_start(study=study, rater=make_user())
    with django_capture_on_commit_callbacks(execute=True):
        user_turn = services.message_send(conversation=conversation, text="Hello")
    client = redis.Redis.from_url(broker_url)
    assert (client.llen("generation_io"), client.llen("generation")) == (1, 1)
    assert Turn.objects.filter(parent=user_turn).count() == 2


def test_a_threads_worker_samples_many_model_server_replies_at_once_on_few_connections(
    start_worker, make_config, make_study, make_user
):
    server = SlowModelServer()
    config = make_config(backend="openai", base_url=server.url, model_path="slow")
    study = make_study(configs=[config], candidates_per_turn=2, overlap=10)
    conversations = [services.conversation_start(study=study, rater=make_user()) for _ in range(8)]
    start_worker(concurrency=24, pool="threads", queues=("generation_io",), DB_POOL_MAX_SIZE="2", PGAPPNAME=IO_WORKER)
    started = time.monotonic()
    user_turns = [services.message_send(conversation=c, text="Hello") for c in conversations]
    replies = Turn.objects.filter(parent__in=user_turns)
    peak = 0

    def all_done() -> bool:
        nonlocal peak
        peak = max(peak, _worker_connections())
        return all(t.status == Turn.Status.DONE for t in replies.all())

    wait_until(all_done, timeout=60, every=0.1, what="16 replies done")
    elapsed = time.monotonic() - started
    print(f"\n16 model-server replies of 1 s on 24 threads: {elapsed:.1f} s, peak {peak} worker connections")
    # 16 replies of 1 s each: one at a time would take 16 s; on threads they overlap
    assert elapsed < 8, elapsed
    assert all(t.text.strip().startswith("word0") and t.text.strip().endswith("word9") for t in replies)
    # ... and the worker held at most its pool (2) plus Celery's own connection, not one per thread
    assert peak <= 4, peak


@pytest.mark.django_db
def test_raters_are_told_while_the_model_loads(tiny_config, make_study, make_conversation, monkeypatch):
    """A reply whose model is not loaded yet says so on the page (the note) until its first token."""
    from annotate import generation
    from workers import backends

    monkeypatch.setattr("annotate.services._enqueue", lambda *args, **kwargs: None)
    config = tiny_config(max_new_tokens=4, min_new_tokens=4)
    conversation = make_conversation(study=make_study(configs=[config], candidates_per_turn=1))
    user_turn = services.message_send(conversation=conversation, text="hello")
    (reply,) = user_turn.children.all()
    notes: list[str] = []
    sample = generation.generate_all

    def watched(*args: Any, **kwargs: Any) -> Any:
        notes.append(Turn.objects.get(pk=reply.pk).note)  # what the stream shows while the model loads
        return sample(*args, **kwargs)

    monkeypatch.setattr(generation, "generate_all", watched)
    monkeypatch.setattr(backends, "_LOADED", {})  # this process has not loaded it yet
    assert generation.turn_generate(turn_id=reply.pk) == "done"
    reply.refresh_from_db()
    assert notes == [generation.MODEL_LOADING_NOTE]
    assert reply.note == "" and reply.text  # cleared with the first token
    # Once loaded, the next reply starts without the note
    other = services.message_send(conversation=make_conversation(study=conversation.study), text="hi")
    (second,) = other.children.all()
    assert generation.turn_generate(turn_id=second.pk) == "done"
    assert notes == [generation.MODEL_LOADING_NOTE, ""]
