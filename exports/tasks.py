"""Celery task for exports requested in admin (time limits in workers.celery_app)."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.conf import settings

from exports.services import export_run


@shared_task(bind=True, name="exports.tasks.export_dataset_task", max_retries=100)
def export_dataset_task(self: Any, export_id: int) -> str:
    """Build a dataset export requested in admin (exports.services.export_run)."""
    outcome = export_run(export_id=export_id)
    if outcome == "busy":  # a redelivered copy while the first run still reports progress
        raise self.retry(countdown=settings.EXPORT_LEASE_SECONDS)
    return outcome
