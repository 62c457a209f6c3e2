"""labeling's part in a live session, through annotate's signals (connected in apps.py)."""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.auth.models import User
from django.urls import reverse

from annotate.models import Conversation, Participant, Study, Turn
from core.errors import ActionRefused
from labeling.models import Tag
from labeling.selectors import labels_for, qualification_state, studies_to_qualify, tags_by_turn
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
        "live_tags": tags_by_turn(turn_ids=[t.pk for t in turns], rater_id=conversation.rater_id, task=Tag.Task.LIVE),
    }


def refuse_work_before_qualification(*, study: Study, rater: User, **_: Any) -> None:
    """In a study with qualification items, no new work for a rater who has not passed them: they get a link
    to the qualification (or to their results, if they did not pass). An excluded rater is refused by
    `conversation_start` itself."""
    state = qualification_state(study, rater)
    if not state.required:
        return
    url = reverse("labeling:qualify", args=[study.slug])
    if state.failed:
        raise ActionRefused("You did not pass this study's qualification.", 403, link=url, link_text="Your results")
    raise ActionRefused(
        "This study asks you to pass a short qualification first: tag a few replies whose answers are known.",
        403,
        link=url,
        link_text="Take the qualification",
    )


def home_qualification(*, user: User, studies: list[Study], **_: Any) -> dict[str, Any]:
    """The home page's studies whose qualification the user still has to take (they link to it)."""
    return {"qualify_study_ids": studies_to_qualify(studies, user) if user.is_authenticated else set()}


def panel_qualification_step(*, participant: Participant, **_: Any) -> str | None:
    """A panel participant's step between consent and work: the study's qualification while they have not
    passed it (failing screens them out, so they never come back here)."""
    state = qualification_state(participant.study, participant.user)
    return reverse("labeling:qualify", args=[participant.study.slug]) if state.required else None
