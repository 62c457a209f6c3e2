"""The claim protocol that makes generation safe under redelivery, on PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from annotate import generation, selectors, services
from annotate.models import Turn

pytestmark = pytest.mark.django_db


@pytest.fixture
def candidate(make_conversation):
    conversation = make_conversation()
    user_turn = services.message_send(conversation=conversation, text="hello")
    return selectors.candidates_of(user_turn)[0]


def test_pending_turn_is_claimed_once(candidate):
    assert generation.turn_claim(turn_id=candidate.pk) == 1
    assert generation.turn_claim(turn_id=candidate.pk) is None  # live lease, not a redelivery
    candidate.refresh_from_db()
    assert candidate.status == Turn.Status.STREAMING and candidate.attempt == 1 and candidate.claimed_by


def test_redelivered_message_takes_over_and_the_old_attempt_can_no_longer_write(candidate):
    first = generation.turn_claim(turn_id=candidate.pk)
    second = generation.turn_claim(turn_id=candidate.pk, redelivered=True)
    assert (first, second) == (1, 2)
    stale_writer = Turn.objects.filter(pk=candidate.pk, attempt=first, status=Turn.Status.STREAMING)
    assert stale_writer.update(text="from the dead worker") == 0


def test_silent_lease_can_be_taken_over(candidate, settings):
    settings.TURN_LEASE_SECONDS = 30
    generation.turn_claim(turn_id=candidate.pk)
    Turn.objects.filter(pk=candidate.pk).update(heartbeat_at=timezone.now() - timedelta(seconds=31))
    assert generation.turn_claim(turn_id=candidate.pk) == 2


def test_busy_then_done_turns_are_not_generated_again(candidate):
    generation.turn_claim(turn_id=candidate.pk)
    assert generation.turn_generate(turn_id=candidate.pk) == "busy"
    Turn.objects.filter(pk=candidate.pk).update(status=Turn.Status.DONE, text="finished")
    assert generation.turn_generate(turn_id=candidate.pk, redelivered=True) == "skipped"
    candidate.refresh_from_db()
    assert candidate.text == "finished" and candidate.attempt == 1


def test_turn_that_keeps_killing_workers_is_failed_not_retried_forever(candidate, settings):
    settings.TURN_MAX_CRASHES = 3
    Turn.objects.filter(pk=candidate.pk).update(status=Turn.Status.STREAMING, attempt=3)
    assert generation.turn_generate(turn_id=candidate.pk, redelivered=True) == "failed"
    candidate.refresh_from_db()
    assert candidate.status == Turn.Status.FAILED and "stopped 3 times" in candidate.error


def test_empty_reply_is_a_failure_the_rater_can_retry_with_a_new_seed(make_study, make_conversation, tiny_config):
    # Every character is a stop string, so the model's first token ends the reply empty.
    config = tiny_config(max_new_tokens=8, stop=[chr(c) for c in range(32, 127)] + ["\n"])
    conversation = make_conversation(study=make_study(configs=[config], candidates_per_turn=1))
    user_turn = services.message_send(conversation=conversation, text="hello")
    (turn,) = selectors.candidates_of(user_turn)
    assert generation.turn_generate(turn_id=turn.pk) == "failed"
    turn.refresh_from_db()
    assert turn.status == Turn.Status.FAILED and turn.error == "The model returned an empty reply."
    old_seed = turn.seed
    retried = services.turn_retry(conversation=conversation, turn_id=turn.pk)
    assert retried.status == Turn.Status.PENDING and retried.seed != old_seed
