"""A worker that dies while it samples a turn: the turn is still finished, exactly once.

The generation task is acknowledged late and rejected (requeued) when its pool process is lost,
and kombu's Redis transport hands an unacknowledged message out again once it is older than the
visibility timeout. Either way the message comes back flagged ``redelivered``, and `turn_claim`
lets that new attempt take the streaming turn over at once. A message that is not flagged (a
turn held by a worker we know nothing about) waits until the holder's lease ran out, by retrying.
"""

from __future__ import annotations

import os
import re
import signal
import time
from typing import Any

import psutil
import redis
from django.utils import timezone

from annotate import services
from annotate.models import Comparison, Conversation, Turn
from annotate.tasks import sample_turn_task
from tests.processes import wait_until

SUCCEEDED = re.compile(r"sample_turn_task\[[^]]+\] succeeded in [\d.]+s: 'done'")
LONG = 800  # tokens: seconds of generation on the tiny model, so it is surely killed midway


def claimed_pid(turn: Turn) -> int:
    return int(turn.claimed_by.rsplit(":", 1)[1])


def streaming_with_text(turn_id: int) -> Turn | None:
    turn = Turn.objects.get(pk=turn_id)
    return turn if turn.status == Turn.Status.STREAMING and turn.text else None


def is_done(turn_id: int) -> bool:
    turn = Turn.objects.get(pk=turn_id)
    assert turn.status != Turn.Status.FAILED, turn.error
    return turn.status == Turn.Status.DONE


def one_candidate_conversation(make_study: Any, make_conversation: Any, config: Any) -> Conversation:
    return make_conversation(study=make_study(configs=[config], candidates_per_turn=1))


def assert_finished_once(conversation: Conversation, user_turn: Turn, *, tokens: int, not_by: set[int]) -> Turn:
    turn = Turn.objects.get(parent=user_turn)
    assert turn.status == Turn.Status.DONE and turn.error == ""
    assert turn.attempt == 2  # the lost attempt, then the one that finished
    assert claimed_pid(turn) not in not_by
    assert turn.text.strip()
    assert turn.completion_tokens == tokens
    assert turn.first_token_at is not None and turn.started_at <= turn.first_token_at <= turn.finished_at
    # Nothing duplicated or left over: one conversation, one user turn, one reply, no vote.
    assert list(Turn.objects.values_list("conversation_id", "role", "position")) == [
        (conversation.pk, "user", 0),
        (conversation.pk, "assistant", 0),
    ]
    assert Conversation.objects.count() == 1
    assert Comparison.objects.count() == 0
    return turn


def broker_drained(broker_url: str) -> bool:
    """Nothing waiting in the generation queue and nothing held unacknowledged."""
    client = redis.Redis.from_url(broker_url)
    return client.llen("generation") == 0 and client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0


def test_killed_pool_process_is_replaced_and_the_turn_finishes_once(
    start_worker, settings, broker_url, tiny_config, make_study, make_conversation
):
    # A lease far longer than the test: only the redelivered flag can let a new attempt take
    # the streaming turn over this soon (an unflagged message would wait the lease out).
    settings.TURN_LEASE_SECONDS = 600
    conversation = one_candidate_conversation(
        make_study, make_conversation, tiny_config(max_new_tokens=LONG, min_new_tokens=LONG)
    )
    worker = start_worker(concurrency=1)
    main = psutil.Process(worker.proc.pid)
    user_turn = services.message_send(conversation=conversation, text="Tell me a long story")
    turn_id = Turn.objects.get(parent=user_turn).pk
    victim = claimed_pid(wait_until(lambda: streaming_with_text(turn_id), what="streaming with text"))
    assert victim in {child.pid for child in main.children()}  # the pool process, not the main one

    # When the pool process running the task is killed mid-generation
    os.kill(victim, signal.SIGKILL)

    # Then the main process requeues the message and a fresh pool process finishes the turn
    wait_until(lambda: is_done(turn_id), what="turn done")
    turn = assert_finished_once(conversation, user_turn, tokens=LONG, not_by={victim, main.pid})
    assert main.is_running() and claimed_pid(turn) in {child.pid for child in main.children()}
    log = worker.output()
    assert "WorkerLostError" in log
    assert "Retry in" not in log  # taken over at once as a redelivery, not after the lease
    # The row is DONE a moment before the worker logs the task's success.
    wait_until(lambda: SUCCEEDED.search(worker.output()), timeout=20, what="task success logged")
    wait_until(lambda: broker_drained(broker_url), timeout=10, what="broker drained")


def test_whole_worker_killed_then_a_new_worker_restores_the_message(
    start_worker, settings, broker_url, tiny_config, make_study, make_conversation
):
    # The lease again outlasts the test: the restored message must carry the redelivered flag.
    settings.TURN_LEASE_SECONDS = 600
    visibility = 3
    conversation = one_candidate_conversation(
        make_study, make_conversation, tiny_config(max_new_tokens=LONG, min_new_tokens=LONG)
    )
    first = start_worker(concurrency=1)
    user_turn = services.message_send(conversation=conversation, text="Tell me a long story")
    turn_id = Turn.objects.get(parent=user_turn).pk
    victim = claimed_pid(wait_until(lambda: streaming_with_text(turn_id), what="streaming with text"))
    dead = {first.proc.pid, *(child.pid for child in psutil.Process(first.proc.pid).children())}
    assert victim in dead

    # When the whole worker (main and pool processes) is killed mid-generation
    os.killpg(first.proc.pid, signal.SIGKILL)
    first.proc.wait(timeout=10)
    wait_until(lambda: not psutil.pid_exists(victim), timeout=10, what="pool process gone")
    client = redis.Redis.from_url(broker_url)
    assert client.llen("generation") == 0 and client.hlen("unacked") == 1  # held by nobody now
    assert Turn.objects.get(pk=turn_id).status == Turn.Status.STREAMING

    # and a new worker starts once the message is older than its visibility timeout (a worker
    # scans for such messages when it starts, then only every ~100 s: 10 s x throttle 10)
    [(_, delivered_at)] = client.zrange("unacked_index", 0, -1, withscores=True)
    wait_until(lambda: time.time() - delivered_at > visibility + 0.5, timeout=30, what="message aged")
    second = start_worker(concurrency=1, CELERY_VISIBILITY_TIMEOUT=str(visibility))

    # Then the new worker gets the message back, flagged redelivered, and finishes the turn
    wait_until(lambda: is_done(turn_id), what="turn done")
    turn = assert_finished_once(conversation, user_turn, tokens=LONG, not_by=dead)
    assert claimed_pid(turn) in {child.pid for child in psutil.Process(second.proc.pid).children()}
    log = second.output()
    assert "Retry in" not in log
    wait_until(lambda: SUCCEEDED.search(second.output()), timeout=20, what="task success logged")
    wait_until(lambda: broker_drained(broker_url), timeout=10, what="broker drained")


def test_unflagged_message_for_a_held_turn_retries_until_the_lease_runs_out(
    start_worker, settings, broker_url, tiny_config, make_study, make_conversation, monkeypatch
):
    # Given a turn another worker claimed and is still writing to (we play that worker), and a
    # plain, unflagged message for it: the 'busy' path, which retries after the lease
    settings.TURN_LEASE_SECONDS = 2
    conversation = one_candidate_conversation(
        make_study, make_conversation, tiny_config(max_new_tokens=24, min_new_tokens=24)
    )
    worker = start_worker(concurrency=1)
    with monkeypatch.context() as patched:
        patched.setattr(services, "_enqueue", lambda ids, **_: None)
        user_turn = services.message_send(conversation=conversation, text="Hello there")
    held = Turn.objects.filter(parent=user_turn)
    held.update(status=Turn.Status.STREAMING, attempt=1, claimed_by="elsewhere:4242", heartbeat_at=timezone.now())
    turn_id = held.get().pk
    sample_turn_task.delay(turn_id)

    # While the holder keeps writing, the task finds the turn busy and retries later
    def heartbeat_until_retry() -> bool:
        held.update(heartbeat_at=timezone.now())
        return "Retry in" in worker.output()

    wait_until(heartbeat_until_retry, timeout=60, what="task retried")
    assert Turn.objects.get(pk=turn_id).attempt == 1  # not taken over while the lease is live

    # When the holder goes silent, a retry takes the turn over once the lease has run out
    wait_until(lambda: is_done(turn_id), timeout=60, what="turn done")
    turn = assert_finished_once(conversation, user_turn, tokens=24, not_by={4242})
    assert claimed_pid(turn) in {child.pid for child in psutil.Process(worker.proc.pid).children()}
    wait_until(lambda: SUCCEEDED.search(worker.output()), timeout=20, what="task success logged")
    wait_until(lambda: broker_drained(broker_url), timeout=10, what="broker drained")
