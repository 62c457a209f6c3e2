"""The qualification a study may ask for before real work: the rater tags a few gold replies, one at
a time, and passes when enough of them match the known tags (`labeling.services.qualification_answer`).

GET shows the next item, or the result once every item is answered; POST scores one answer and
redirects back (so a reload never posts twice). Without qualification items the page says so.

Panel participants (annotate.panel) come here from their steps, after consent: once they pass or fail they
are sent on to `participant_next_step` (work, or the done page with the screen-out code), and before consent
they are sent back to it.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from annotate import panel
from annotate.models import Participant, Study, Turn
from core.errors import ActionRefused
from core.http import AppRequest
from core.validation import parse_int
from labeling import selectors, services
from labeling.selectors import QualificationState


def _page(request: AppRequest, state: QualificationState, *, error: str = "", status: int = 200) -> HttpResponse:
    labels = [label for label in selectors.labels_for(state.study) if label.applies_to(Turn.Role.ASSISTANT)]
    context = {
        "study": state.study,
        "state": state,
        "item": state.next_item,
        "labels": labels,
        "results": [(item, state.answers.get(item.pk)) for item in state.items],
        "pass_percent": round(state.study.qualification_pass_mark * 100),
        "error": error,
    }
    return render(request, "labeling/qualify.html", context, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def qualify(request: AppRequest, slug: str) -> HttpResponse:
    study = get_object_or_404(Study, slug=slug, is_active=True)
    member = panel.participant_of(study, request.user)
    if member is not None and _elsewhere(member):
        return redirect(panel.participant_next_step(member))
    if request.method == "GET":
        return _page(request, selectors.qualification_state(study, request.user))
    try:
        item_id = parse_int(request.POST.get("item"), name="item") or 0
        services.qualification_answer(
            study=study, rater=request.user, item_id=item_id, label_ids=request.POST.getlist("labels")
        )
    except ActionRefused as exc:
        state = selectors.qualification_state(study, request.user)
        return _page(request, state, error=exc.message, status=exc.status)
    if member is not None:  # passed: to work; failed: screened out, to the done page; else the next item
        member.refresh_from_db()
        return redirect(panel.participant_next_step(member))
    return redirect("labeling:qualify", slug=study.slug)


def _elsewhere(member: Participant) -> bool:
    """A panel participant whose step is not the qualification: before consent, or once they have left."""
    return member.consented_at is None or member.status != Participant.Status.ACTIVE
