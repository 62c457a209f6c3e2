"""Model configurations, model backends and loading, and the Celery app (`celery -A workers`)."""

from __future__ import annotations

from workers.celery_app import app as celery_app

__all__ = ["celery_app"]
