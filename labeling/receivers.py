"""labeling's part in a live session, through annotate's signals (connected in apps.py)."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.models import User

from annotate.models import Conversation, Turn
from core.errors import ActionRefused
from labeling.models import Tag
from labeling.selectors import labels_for, tags_by_turn
from labeling.services import untagged_candidates
from labeling.suggestions import suggest_for_turn

log = logging.getLogger(__name__)


def refuse_untagged_vote(*, conversation: Conversation, rater: User, candidates: list[Turn], **_: Any) -> None:
    """A study with `tags_required_before_vote` takes the vote only once every reply is tagged."""
    if not conversation.study.tags_required_before_vote:
        return
    missing = untagged_candidates(rater=rater, candidates=candidates)
    if missing:
        names = ", ".join(f"reply {c.label}" for c in missing)
        raise ActionRefused(f"This study asks you to tag every reply before choosing: tag {names}.", 409)


def suggest_on_finished_reply(*, turn_id: int, **_: Any) -> None:
    """Pre-tag a reply as soon as it is done, so the rater sees the suggestion with the reply."""
    try:  # suggestions are optional: they must never fail a finished reply
        suggest_for_turn(turn_id=turn_id)
    except Exception:
        log.exception("Tag suggestions failed for turn %s", turn_id)


def session_tagging(*, conversation: Conversation, turns: list[Turn], **_: Any) -> dict[str, Any]:
    """The labels and the rater's live tags that the session page's tag bars show."""
    return {
        "tag_labels": labels_for(conversation.study),
        "live_tags": tags_by_turn(turn_ids=[t.pk for t in turns], rater=conversation.rater, task=Tag.Task.LIVE),
    }
