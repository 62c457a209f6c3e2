"""Panel participants (Prolific, or any panel that passes ids in the study link): entry, consent, the
hand-over to work, completion, screen-out and return; time on task, bonus and the pay sheet.

The steps are decided in one place, `participant_next_step`:

    study link /p/<slug>/?PROLIFIC_PID=…  ──▶ participant_enter: one account per panel id, no password
      ──▶ consent (or decline: returned)
      ──▶ qualification, when a receiver of `signals.participant_step` says so (quality control)
      ──▶ work: `services.conversation_start`, the conversation page, the closing survey
      ──▶ done page: completed once the database holds the finished work ──▶ the panel's completion URL

A participant leaves with one of the study's codes: completion (work done), screen-out
(`participant_screen_out`: failed qualification, no places left) or returned (declined consent).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.urls import reverse
from django.utils import timezone
from django.utils.crypto import salted_hmac

from annotate import selectors, services, signals
from annotate.models import Comparison, Conversation, Participant, Study, Turn
from core.errors import ActionRefused
from core.validation import unstorable

PANEL_ID_MAX = 100  # the columns holding the ids (Participant.external_id, panel_study_id, panel_session_id)
REASON_MAX = 200  # Participant.screenout_reason
NO_PLACES = "No places left: every scenario has all the raters it needs."
# Placeholders a panel fills in; left as they are, the link was copied by hand or previewed wrongly.
_PLACEHOLDER_MARKS = ("{{%", "%}}", "%%")

# --- entry ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PanelIds:
    """The ids the panel passed in the study link."""

    participant: str
    study: str = ""
    session: str = ""


def panel_ids(study: Study, query: Mapping[str, Sequence[str]]) -> PanelIds:
    """The ids in the study link's query (`dict(request.GET.lists())`), under the study's parameter names.

    The participant id is required; each id is one value of printable characters (no NUL or other control
    characters), at most `PANEL_ID_MAX` long. Anything else is refused (400) with what to do about it.
    """
    return PanelIds(
        participant=_panel_value(query, study.panel_participant_param, required=True),
        study=_panel_value(query, study.panel_study_param),
        session=_panel_value(query, study.panel_session_param),
    )


def _panel_value(query: Mapping[str, Sequence[str]], name: str, *, required: bool = False) -> str:
    values = list(query.get(name) or [])
    if len(values) > 1:
        raise ActionRefused(f"The study link gives {name} more than once. Open the study again from your panel.")
    value = values[0].strip() if values else ""
    if not value:
        if required:
            raise ActionRefused(
                f"This study link has no participant id ({name}). Open the study from your panel's page "
                "(e.g. Prolific): its link carries your id."
            )
        return ""
    if len(value) > PANEL_ID_MAX:
        raise ActionRefused(
            f"The {name} in the study link is {len(value):,} characters long; an id has at most {PANEL_ID_MAX}."
        )
    if not value.isprintable() or unstorable(value):
        raise ActionRefused(f"The {name} in the study link contains characters an id cannot have.")
    if any(mark in value for mark in _PLACEHOLDER_MARKS):
        raise ActionRefused(
            f"The {name} in the study link is the panel's placeholder ({value[:40]}), not an id: "
            "open the study from your panel, which fills it in."
        )
    return value


def participant_enter(*, study: Study, ids: PanelIds) -> Participant:
    """The study's participant with this panel id: made on the first entry, with an account of its own that
    has no password (the study link is how they sign in), and resumed on every later entry, from any browser.

    One panel id is one participant: two first entries at once insert one row (the constraint on the study
    and the external id), and the other entry resumes it. A closed study takes no new participants (409).
    """
    participant = _panel_participant(study, ids.participant)
    if participant is None:
        if not study.is_active:
            raise ActionRefused("This study is closed: it takes no new participants. Thank you!", status=409)
        try:
            participant = _participant_create(study, ids)
        except IntegrityError:  # a first entry with the same id, at the same moment, was first
            participant = None
        participant = participant or _panel_participant(study, ids.participant)
        if participant is None:
            raise ActionRefused("This participant id cannot be used here; contact the researcher.", status=409)
    elif ids.session and ids.session != participant.panel_session_id:
        # A new panel session (a retake): keep the latest, so the pay sheet matches the panel.
        Participant.objects.filter(pk=participant.pk).update(panel_session_id=ids.session)
        participant.panel_session_id = ids.session
    if not participant.user.is_active:
        raise ActionRefused("Your place in this study was closed. Contact the researcher through your panel.", 403)
    return participant


def _panel_participant(study: Study, external_id: str) -> Participant | None:
    return Participant.objects.select_related("study", "user").filter(study=study, external_id=external_id).first()


@transaction.atomic
def _participant_create(study: Study, ids: PanelIds) -> Participant | None:
    """A new account and participant; None when the account already exists for someone else."""
    username = participant_username(study, ids.participant)
    user, created = User.objects.get_or_create(username=username, defaults={"password": make_password(None)})
    if not created and (_has_own_login(user) or user.participations.filter(study=study).exists()):
        return None  # the participant's own (made by a concurrent entry), or an account to keep apart
    return Participant.objects.create(
        study=study,
        user=user,
        external_id=ids.participant,
        panel_study_id=ids.study,
        panel_session_id=ids.session,
    )


def participant_username(study: Study, external_id: str) -> str:
    """The account name for a panel id: stable, short, and not the id itself (shown in the page header)."""
    digest = salted_hmac("annotate.panel.username", f"{study.pk}\x1f{external_id}").hexdigest()[:20]
    return f"p-{study.slug[:40]}-{digest}"


def _has_own_login(user: User) -> bool:
    return user.is_staff or user.is_superuser or user.has_usable_password()


def is_panel_account(user: User) -> bool:
    """An account made by a study link (no password, not staff): it may be signed out without asking."""
    return (
        user.is_authenticated
        and not _has_own_login(user)
        and Participant.objects.filter(user=user, external_id__isnull=False).exists()
    )


def is_account_of(user: User, study: Study, external_id: str) -> bool:
    """Whether `user` is already the account of this panel id in the study."""
    return (
        user.is_authenticated and Participant.objects.filter(study=study, external_id=external_id, user=user).exists()
    )


def participant_of(study: Study, user: User) -> Participant | None:
    """The user's place in the study as a panel participant (None for raters made by hand)."""
    if not user.is_authenticated:
        return None
    return (
        Participant.objects.select_related("study", "user")
        .filter(study=study, user=user, external_id__isnull=False)
        .first()
    )


# --- the steps -----------------------------------------------------------------------------------


def participant_next_step(participant: Participant) -> str:
    """The URL of what the participant does now: consent → qualification → work → done.

    A participant who left (completed, screened out, returned) lands on the done page with their code.
    Quality control joins between consent and work through `participant_qualification_step`.
    """
    slug = participant.study.slug
    if participant.status != Participant.Status.ACTIVE:
        return panel_url("panel_done", slug)
    if participant.consented_at is None:
        return panel_url("panel_consent", slug)
    step = participant_qualification_step(participant)
    if step:
        return step
    active = _active_conversation(participant)
    if active is not None:
        return reverse("annotate:conversation", kwargs={"pk": active.pk})
    if _work_done(participant):
        return panel_url("panel_done", slug)
    return panel_url("panel_work", slug)


def participant_qualification_step(participant: Participant) -> str | None:
    """The hook for quality control: the URL of a step the participant must take after consent and before
    work (the study's qualification, while not passed), or None. Asked of the receivers of
    `signals.participant_step` (labeling, a layer above, connects one); the first URL given wins."""
    for _, url in signals.participant_step.send(sender=Participant, participant=participant):
        if url:
            return str(url)
    return None


def participant_continue(participant: Participant) -> str:
    """`participant_next_step`, handing the work out now when that is the next step (for POSTs: after
    consent, the work page's button): the URL of the conversation, or of the done page when there is no
    work left for them (done if they finished a conversation, screened out if they have none: no places).
    A refusal to try again later (busy: it carries Retry-After) ends nobody's place: it is passed on, with a
    link back to the work page."""
    url = participant_next_step(participant)
    if url != panel_url("panel_work", participant.study.slug):
        return url
    study = participant.study
    try:
        conversation = services.conversation_start(study=study, rater=participant.user)
    except ActionRefused as exc:
        if "Retry-After" in exc.headers:
            # Busy (or too fast) for now: no reason to end their place. Say so, with the way back to the work page.
            raise ActionRefused(
                exc.message,
                exc.status,
                link=panel_url("panel_work", study.slug),
                link_text="Try again",
                headers=exc.headers,
            ) from exc
        if exc.link or not study.is_active or Participant.objects.filter(pk=participant.pk, excluded=True).exists():
            raise  # a step to take first (its link is shown), a closed study, an excluded rater: say so
        if completed_count(participant) > 0:
            _complete(participant, all_work=False)
        elif not _places_left(participant):
            participant_screen_out(participant, NO_PLACES)
        else:
            raise
        return panel_url("panel_done", study.slug)
    return reverse("annotate:conversation", kwargs={"pk": conversation.pk})


def url_after_finish(conversation: Conversation) -> str | None:
    """Where a panel participant goes once a conversation is finished (the next step: done page or next
    conversation); None for a rater made by hand (the transcript)."""
    participant = participant_of(conversation.study, conversation.rater)
    return participant_next_step(participant) if participant else None


def participant_home_url(user: User) -> str | None:
    """For a panel account, the next step in its study: participants never see the list of studies."""
    if not user.is_authenticated or _has_own_login(user):
        return None
    participant = (
        Participant.objects.select_related("study", "user")
        .filter(user=user, external_id__isnull=False)
        .order_by("-started_at", "-pk")
        .first()
    )
    return participant_next_step(participant) if participant else None


def direct_start_check(study: Study, user: User) -> None:
    """Refuse the home page's start button (`views.study_start`) to panel participants: their work is
    handed out through their study's steps (consent first), and a panel account works in its study only."""
    participant = participant_of(study, user)
    if participant is not None:
        if participant_next_step(participant) != panel_url("panel_work", study.slug):
            raise ActionRefused(
                "Continue through your study's steps.", 409, link=participant_next_step(participant), link_text="Go on"
            )
    elif is_panel_account(user):
        raise ActionRefused("Your account takes part in another study only.", status=403)


def panel_url(name: str, slug: str) -> str:
    return reverse(f"annotate:{name}", kwargs={"slug": slug})


def _active_conversation(participant: Participant) -> Conversation | None:
    return Conversation.objects.filter(
        study_id=participant.study_id, rater_id=participant.user_id, status=Conversation.Status.ACTIVE
    ).first()


def completed_count(participant: Participant) -> int:
    """The participant's completed conversations in their study."""
    return Conversation.objects.filter(
        study_id=participant.study_id, rater_id=participant.user_id, status=Conversation.Status.COMPLETED
    ).count()


def _work_done(participant: Participant) -> bool:
    """All the work asked of the participant is done: the study's quota (`conversations_per_rater`) of
    completed conversations, or, in a study without a quota (0), one at least and no scenario left for them."""
    completed = completed_count(participant)
    quota = participant.study.conversations_per_rater
    if quota > 0:
        return completed >= quota
    return completed > 0 and not _places_left(participant)


def _places_left(participant: Participant) -> bool:
    """Whether a scenario the participant has not done still wants raters (`selectors.scenarios_open_to`, as
    `services.conversation_start` counts): to tell "full" from other refusals, and in a study without a quota."""
    return selectors.scenarios_open_to(participant.study, participant.user).exists()


# --- consent, leaving, completion ---------------------------------------------------------------


def _locked(participant: Participant) -> Participant:
    return Participant.objects.select_for_update(of=("self",)).select_related("study").get(pk=participant.pk)


@transaction.atomic
def participant_consent(participant: Participant) -> Participant:
    """The participant agreed to the consent text: work may start. Agreeing twice keeps the first time."""
    locked = _locked(participant)
    if locked.status != Participant.Status.ACTIVE:
        raise ActionRefused("You have left this study.", status=409)
    if locked.consented_at is None:
        locked.consented_at = timezone.now()
        locked.save(update_fields=["consented_at"])
    return locked


@transaction.atomic
def participant_return(participant: Participant) -> Participant:
    """The participant does not take part (declined consent, or withdrew): they leave with the study's
    returned code, and an active conversation of theirs is abandoned (its scenario goes back to the pool)."""
    return _leave(participant, Participant.Status.RETURNED)


@transaction.atomic
def participant_screen_out(participant: Participant, reason: str) -> Participant:
    """End the participant's place before their work is done (failed qualification, no places left): they
    leave with the study's screen-out code; `reason` is kept (`screenout_reason`, admin only). An active
    conversation of theirs is abandoned. Screening out again changes nothing; a participant who completed or
    returned cannot be screened out (409). Returns the participant; send them to `participant_next_step`."""
    return _leave(participant, Participant.Status.SCREENED_OUT, reason=reason)


def _leave(participant: Participant, status: str, *, reason: str = "") -> Participant:
    locked = _locked(participant)
    if locked.status == status:
        return locked
    if locked.status != Participant.Status.ACTIVE:
        raise ActionRefused(f"This participant has already left the study ({locked.get_status_display()}).", 409)
    now = timezone.now()
    locked.status = status
    locked.completed_at = now
    if reason:
        reason = " ".join(reason.split())[:REASON_MAX]
        locked.screenout_reason = "" if unstorable(reason) else reason
    locked.save(update_fields=["status", "completed_at", "screenout_reason"])
    Conversation.objects.filter(
        study_id=locked.study_id, rater_id=locked.user_id, status=Conversation.Status.ACTIVE
    ).update(status=Conversation.Status.ABANDONED, ended_at=now)
    return locked


@transaction.atomic
def participant_complete(participant: Participant, *, early: bool = False) -> Participant:
    """Record that the participant's work is done, from what the database holds (so only after the finish
    has committed): no conversation still active, at least one completed, and the study's quota met. With
    `early`, a study without a quota (0) lets them stop after any number (one at least). A participant who
    has already left is returned as is. Refused (409) while work is left."""
    return _complete(participant, all_work=not (early and participant.study.conversations_per_rater == 0))


def _complete(participant: Participant, *, all_work: bool) -> Participant:
    locked = _locked(participant)
    if locked.status != Participant.Status.ACTIVE:
        return locked
    if _active_conversation(locked) is not None:
        raise ActionRefused("Finish your conversation first (the survey at its end).", status=409)
    completed = completed_count(locked)
    if completed == 0:
        raise ActionRefused("You have not finished a conversation yet.", status=409)
    if all_work and not _work_done(locked):
        quota = locked.study.conversations_per_rater
        if quota:
            raise ActionRefused(f"This study asks for {quota} conversations; you have finished {completed}.", 409)
        raise ActionRefused("There is more work for you: start the next conversation, or finish the study.", 409)
    locked.status = Participant.Status.COMPLETED
    locked.completed_at = timezone.now()
    locked.bonus = participant_bonus(locked)
    locked.save(update_fields=["status", "completed_at", "bonus"])
    return locked


def exit_code(participant: Participant) -> str:
    """The study's code for how the participant left ("" while they are still active)."""
    study = participant.study
    codes = {
        Participant.Status.COMPLETED: study.completion_code,
        Participant.Status.SCREENED_OUT: study.screenout_code,
        Participant.Status.RETURNED: study.returned_code,
    }
    return codes.get(Participant.Status(participant.status), "")


def exit_url(participant: Participant) -> str:
    """The panel's completion URL with the participant's code in place of {code}; "" while they are active,
    without a code, or when the study's URL is not a web address (only http(s) and paths are followed)."""
    code = exit_code(participant)
    template = participant.study.completion_url.strip()
    if not code or not template or not _followable(template):
        return ""
    return template.replace("{code}", quote(code, safe=""))


def _followable(url: str) -> bool:
    lowered = url.lower()
    return lowered.startswith(("https://", "http://")) or (url.startswith("/") and not url.startswith("//"))


# --- time on task and pay -----------------------------------------------------------------------


def time_on_task(participants: Iterable[Participant]) -> dict[int, timedelta]:
    """Time on task per participant (by pk), in two parts added up:

    * each of their conversations in the study, from its start to its end: the finish (survey sent) for a
      completed one; otherwise (active, expired, abandoned) the rater's last activity: `last_activity_at`,
      their last message or their last vote, whichever is latest (a conversation never used counts 0);
    * qualification, when they consented: from consent to `qualified_at`, or to the screen-out of a
      participant screened out before qualifying.

    Time reading the consent page and between conversations is not counted; the panel's own clock
    (from the link to the code) is the upper bound.
    """
    participants = list(participants)
    total = {p.pk: _qualification_time(p) for p in participants}
    by_rater = {(p.study_id, p.user_id): p.pk for p in participants}
    last_message = Turn.objects.filter(conversation=OuterRef("pk"), role=Turn.Role.USER).order_by("-created_at")
    last_vote = Comparison.objects.filter(conversation=OuterRef("pk"), task=Comparison.Task.LIVE).order_by(
        "-created_at"
    )
    conversations = (
        Conversation.objects.filter(
            study_id__in={p.study_id for p in participants}, rater_id__in={p.user_id for p in participants}
        )
        .annotate(
            last_message=Subquery(last_message.values("created_at")[:1]),
            last_vote=Subquery(last_vote.values("created_at")[:1]),
        )
        .values(
            "study_id", "rater_id", "status", "started_at", "ended_at", "last_activity_at", "last_message", "last_vote"
        )
    )
    for row in conversations:
        pk = by_rater.get((row["study_id"], row["rater_id"]))
        if pk is not None:
            total[pk] += _conversation_time(row)
    return total


def _conversation_time(row: Mapping[str, Any]) -> timedelta:
    started = row["started_at"]
    assert isinstance(started, datetime)
    if row["status"] == Conversation.Status.COMPLETED and isinstance(row["ended_at"], datetime):
        end = row["ended_at"]
    else:
        marks = [row[k] for k in ("last_activity_at", "last_message", "last_vote")]
        end = max((m for m in marks if isinstance(m, datetime)), default=started)
    return max(end - started, timedelta(0))


def _qualification_time(participant: Participant) -> timedelta:
    if participant.consented_at is None:
        return timedelta(0)
    end = participant.qualified_at
    if end is None and participant.status == Participant.Status.SCREENED_OUT:
        end = participant.completed_at
    return max(end - participant.consented_at, timedelta(0)) if end else timedelta(0)


def participant_gold_passed(participant: Participant) -> int:
    """Gold and attention items the participant passed: `Participant.gold_passed`, which quality control
    counts (`services.gold_passed_add`)."""
    return participant.gold_passed


def participant_bonus(participant: Participant) -> Decimal:
    """The bonus due: the study's `bonus_per_gold_passed` × gold items passed, for a participant who completed
    and whose work was not rejected (returned, screened out, active or rejected: nothing)."""
    if participant.status != Participant.Status.COMPLETED or participant.review == Participant.Review.REJECTED:
        return Decimal("0.00")
    return (participant.study.bonus_per_gold_passed * participant_gold_passed(participant)).quantize(Decimal("0.01"))


@transaction.atomic
def participants_review(participants: Iterable[Participant], review: str) -> int:
    """Approve or reject completed participants' work (the others are left as they are); their bonus follows.
    Returns how many were changed."""
    if review not in Participant.Review.values:
        raise ActionRefused(f"Unknown review {review!r}.")
    pks = [p.pk for p in participants]
    changed = 0
    completed = Participant.objects.select_for_update(of=("self",)).select_related("study")
    for participant in completed.filter(pk__in=pks, status=Participant.Status.COMPLETED):
        participant.review = review
        participant.bonus = participant_bonus(participant)
        participant.save(update_fields=["review", "bonus"])
        changed += 1
    return changed


PAY_SHEET_COLUMNS = (
    "participant_id",
    "completion_code",
    "time_minutes",
    "status",
    "bonus",
    "session_id",
    "gold_passed",
    "excluded",
)


def pay_status(participant: Participant) -> str:
    """The status the panel knows: approved / rejected / awaiting_review for a completed participant,
    else returned / screened_out / active."""
    if participant.status == Participant.Status.COMPLETED:
        review = participant.review
        return "awaiting_review" if review == Participant.Review.PENDING else str(review)
    return str(participant.status)


def pay_sheet(participants: QuerySet[Participant]) -> str:
    """The pay sheet of panel participants as CSV text (`PAY_SHEET_COLUMNS`), one row each, in order of
    study and entry. Reading it writes nothing (a viewer may download it): the bonus column is computed
    (`participant_bonus`), as the stored one is on completion, review and admin edits. Text cells that a
    spreadsheet would read as a formula are prefixed with '."""
    rows = list(
        participants.filter(external_id__isnull=False).select_related("study").order_by("study_id", "started_at", "pk")
    )
    times = time_on_task(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PAY_SHEET_COLUMNS)
    for participant in rows:
        writer.writerow(
            [
                _cell(participant.external_id or ""),
                _cell(exit_code(participant)),
                f"{times[participant.pk].total_seconds() / 60:.1f}",
                pay_status(participant),
                f"{participant_bonus(participant):.2f}",
                _cell(participant.panel_session_id),
                participant_gold_passed(participant),
                "yes" if participant.excluded else "no",
            ]
        )
    return out.getvalue()


def _cell(text: str) -> str:
    return "'" + text if text.startswith(("=", "+", "-", "@", "\t", "\r")) else text
