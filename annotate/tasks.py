"""Celery tasks of annotate: thin wrappers that take ids and call a function."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from annotate import generation, services


@shared_task(bind=True, name="annotate.tasks.sample_turn_task", max_retries=20)
def sample_turn_task(self: Any, turn_id: int) -> str:
    """Sample one candidate reply (annotate.generation.turn_generate)."""
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    outcome = generation.turn_generate(turn_id=turn_id, redelivered=redelivered)
    if outcome == "busy":  # another worker holds a live lease; it may yet die
        raise self.retry(countdown=settings.TURN_LEASE_SECONDS)
    return outcome


@shared_task(name="annotate.tasks.expire_conversations_task")
def expire_conversations_task() -> int:
    """Expire the conversations idle past their study's timeout (`services.conversations_expire`); run every
    minute by beat (`workers.celery_app.BEAT_SCHEDULE`). Rerunning, or two at once, expires nothing twice."""
    return services.conversations_expire()
