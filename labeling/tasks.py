"""Celery tasks of labeling: thin wrappers that take ids and call a function."""

from __future__ import annotations

from celery import shared_task

from labeling.suggestions import suggest_for_turn


@shared_task(name="labeling.tasks.suggest_tags_task")
def suggest_tags_task(turn_id: int) -> int:
    """Pre-tag a turn for its rater (labeling.suggestions); rerunning adds nothing."""
    return len(suggest_for_turn(turn_id=turn_id))
