"""Celery tasks: thin wrappers that take ids and call services."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from workers import services


@shared_task(bind=True, name="workers.tasks.sample_turn_task", max_retries=20)
def sample_turn_task(self: Any, turn_id: int) -> str:
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    outcome = services.turn_generate(turn_id=turn_id, redelivered=redelivered)
    if outcome == "busy":  # another worker holds a live lease; it may yet die
        raise self.retry(countdown=settings.TURN_LEASE_SECONDS)
    return outcome


@shared_task(name="workers.tasks.suggest_tags_task")
def suggest_tags_task(turn_id: int) -> int:
    """Pre-tag a turn for its rater (labeling.suggestions); rerunning adds nothing."""
    from labeling.suggestions import suggest_for_turn

    return len(suggest_for_turn(turn_id=turn_id))


@shared_task(
    bind=True, name="workers.tasks.export_dataset_task", max_retries=100, soft_time_limit=3600, time_limit=3660
)
def export_dataset_task(self: Any, export_id: int) -> str:
    """Build a dataset export requested in admin (labeling.services.export_run)."""
    from labeling.services import export_run

    outcome = export_run(export_id=export_id)
    if outcome == "busy":  # a redelivered copy while the first run still reports progress
        raise self.retry(countdown=settings.EXPORT_LEASE_SECONDS)
    return outcome
