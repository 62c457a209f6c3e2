"""Celery tasks of labeling: thin wrappers that take ids and call a function."""

from __future__ import annotations

from celery import shared_task

from labeling import services
from labeling.leaderboard_data import leaderboard_refresh
from labeling.suggestions import suggest_for_turn


@shared_task(name="labeling.tasks.suggest_tags_task")
def suggest_tags_task(turn_id: int) -> int:
    """Pre-tag a turn for its rater (labeling.suggestions); rerunning adds nothing."""
    return len(suggest_for_turn(turn_id=turn_id))


@shared_task(name="labeling.tasks.expire_reviews_task")
def expire_reviews_task() -> int:
    """Expire the review assignments left open past their study's timeout (`services.reviews_expire`); run
    every minute by beat (`workers.celery_app.BEAT_SCHEDULE`)."""
    return services.reviews_expire()


@shared_task(name="labeling.tasks.dashboard_refresh_task")
def dashboard_refresh_task(study_id: int, include_excluded: bool) -> bool:
    """Compute a study's dashboard figures and store them (`services.dashboard_refresh`); sent by
    `services.dashboard_refresh_request`, routed to the `suggestions` queue. False if the study is gone."""
    return services.dashboard_refresh(study_id=study_id, include_excluded=include_excluded) is not None


@shared_task(name="labeling.tasks.leaderboard_refresh_task")
def leaderboard_refresh_task(study_id: int, include_excluded: bool, include_flagged: bool) -> bool:
    """Compute a study's arena leaderboard and cache it (`leaderboard_data.leaderboard_refresh`); sent by
    `leaderboard_data.leaderboard_refresh_request` to the `suggestions` queue. False if the study is gone."""
    refreshed = leaderboard_refresh(
        study_id=study_id, include_excluded=include_excluded, include_flagged=include_flagged
    )
    return refreshed is not None
