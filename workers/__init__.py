"""Celery app, generation tasks and model backends."""

from __future__ import annotations

from workers.celery_app import app as celery_app

__all__ = ["celery_app"]
