"""Celery tasks of annotate: thin wrappers that take ids and call a function."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from annotate import generation, services

# Waits between retries after a database error: 1, 2, 4 … s, at most DB_RETRY_MAX_SECONDS.
DB_RETRY_MAX_SECONDS = 30


@shared_task(bind=True, name="annotate.tasks.sample_turn_task", max_retries=100)
def sample_turn_task(self: Any, turn_id: int, held_attempt: int | None = None) -> str:
    """Sample one candidate reply (annotate.generation.turn_generate). A database error (a restart, no
    connection left) is retried with backoff, taking up the attempt it held, never acknowledged as done."""
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    try:
        outcome = generation.turn_generate(turn_id=turn_id, redelivered=redelivered, held_attempt=held_attempt)
    except generation.TurnInterrupted as exc:
        countdown = min(2**self.request.retries, DB_RETRY_MAX_SECONDS)
        raise self.retry(args=(turn_id,), kwargs={"held_attempt": exc.attempt}, countdown=countdown) from exc
    if outcome == "busy":  # another worker holds a live lease; it may yet die
        raise self.retry(countdown=settings.TURN_LEASE_SECONDS)
    return outcome


@shared_task(name="annotate.tasks.recover_turns_task")
def recover_turns_task() -> dict[str, int]:
    """Take up replies whose worker was lost and resend lost messages (`services.turns_recover`); run every
    RECOVER_SWEEP_SECONDS by beat (`workers.celery_app.BEAT_SCHEDULE`)."""
    return services.turns_recover()


@shared_task(name="annotate.tasks.expire_conversations_task")
def expire_conversations_task() -> int:
    """Expire the conversations idle past their study's timeout (`services.conversations_expire`); run every
    minute by beat (`workers.celery_app.BEAT_SCHEDULE`). Rerunning, or two at once, expires nothing twice."""
    return services.conversations_expire()
