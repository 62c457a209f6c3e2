"""A panel participant's pages: the study link, consent, the work page between conversations, done.
Thin, like annotate.views: parse the request, call annotate.panel, redirect or render.

Refusals are shown on a page of their own (`annotate/panel/message.html`), which, unlike the error page,
does not point at the list of studies. The pages after the link need the participant's session: without
it they ask to open the study link again (403), as a participant has no password to log in with.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import login, logout
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from annotate import panel
from annotate.models import Participant, Study
from core.errors import ActionRefused
from core.http import AppRequest, answers_refusals
from core.ratelimit import rate_limited

# Set explicitly: other backends (e.g. django-axes) may be configured, and a panel account has no password.
MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"
REFRESH_SECONDS = 3  # the done page sends the participant on to the panel after this long


def _message(request: AppRequest, exc: ActionRefused, **_: Any) -> HttpResponse:
    context = {"error": exc.message, "error_link": exc.link, "error_link_text": exc.link_text}
    return render(request, "annotate/panel/message.html", context, status=exc.status)


def _study(slug: str) -> Study:
    study = Study.objects.filter(slug=slug).first()
    if study is None:
        raise ActionRefused("There is no study at this link. Check the link your panel gave you.", status=404)
    return study


def _participant(request: AppRequest, slug: str) -> Participant:
    """The signed-in participant of the study, or a refusal that says how to get back in."""
    participant = panel.participant_of(_study(slug), request.user)
    if participant is None:
        raise ActionRefused(
            "This page belongs to a study participant. Open the study again from your panel (e.g. Prolific): "
            "its link signs you in.",
            status=403,
        )
    return participant


@require_http_methods(["GET", "POST"])
@answers_refusals(page=_message)
@rate_limited("panel_entries", by_address=True)  # anyone may open it, and each entry may make an account
def enter(request: AppRequest, slug: str) -> HttpResponse:
    """The study link. Signs the browser in as the panel id's participant (made on the first entry) and
    sends them to their next step. Someone else signed in is signed out first: at once for another panel
    account; after a confirmation (this same link, posted) for an account with a password or staff."""
    study = _study(slug)
    ids = panel.panel_ids(study, dict(request.GET.lists()))
    user = request.user
    if user.is_authenticated and not panel.is_account_of(user, study, ids.participant):
        if request.method == "GET" and not panel.is_panel_account(user):
            return render(request, "annotate/panel/switch.html", {"study": study, "current": user})
        logout(request)
    participant = panel.participant_enter(study=study, ids=ids)
    if not request.user.is_authenticated:
        login(request, participant.user, backend=MODEL_BACKEND)
    return redirect(panel.participant_next_step(participant))


@require_http_methods(["GET", "POST"])
@answers_refusals(page=_message)
def consent(request: AppRequest, slug: str) -> HttpResponse:
    """The consent text and instructions; "I agree" goes on to the work, "I do not agree" leaves (returned)."""
    participant = _participant(request, slug)
    if request.method == "POST":
        decision = request.POST.get("decision")
        if decision == "agree":
            participant = panel.participant_consent(participant)
            return redirect(panel.participant_continue(participant))
        if decision == "decline":
            panel.participant_return(participant)
            return redirect("annotate:panel_done", slug=slug)
        raise ActionRefused("Choose “I agree” or “I do not agree”.")
    if participant.status != Participant.Status.ACTIVE or participant.consented_at is not None:
        return redirect(panel.participant_next_step(participant))
    return render(request, "annotate/panel/consent.html", {"participant": participant, "study": participant.study})


@require_http_methods(["GET", "POST"])
@answers_refusals(page=_message)
def work(request: AppRequest, slug: str) -> HttpResponse:
    """Between conversations: start the next one, or (a study without a quota) finish the study."""
    participant = _participant(request, slug)
    if request.method == "POST":
        if request.POST.get("action") == "finish":
            panel.participant_complete(participant, early=True)
            return redirect("annotate:panel_done", slug=slug)
        return redirect(panel.participant_continue(participant))
    here = panel.panel_url("panel_work", slug)
    next_step = panel.participant_next_step(participant)
    if next_step != here:
        return redirect(next_step)
    study = participant.study
    completed = panel.completed_count(participant)
    context = {
        "participant": participant,
        "study": study,
        "completed": completed,
        "can_finish": completed > 0 and study.conversations_per_rater == 0,
    }
    return render(request, "annotate/panel/work.html", context)


@require_http_methods(["GET"])
@answers_refusals(page=_message)
def done(request: AppRequest, slug: str) -> HttpResponse:
    """The end: records the completion once the database holds the finished work (else back to the next
    step), shows the participant's code and sends them on to the panel's completion URL."""
    participant = _participant(request, slug)
    if participant.status == Participant.Status.ACTIVE:
        try:
            participant = panel.participant_complete(participant)
        except ActionRefused:
            return redirect(panel.participant_next_step(participant))
    context = {
        "participant": participant,
        "study": participant.study,
        "code": panel.exit_code(participant),
        "exit_url": panel.exit_url(participant),
        "no_places": participant.screenout_reason == panel.NO_PLACES,
        "refresh_seconds": REFRESH_SECONDS,
    }
    return render(request, "annotate/panel/done.html", context)
