"""The review pass: a rater claims a finished conversation of someone else's and tags it turn by turn."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_POST

from annotate import selectors as annotate_selectors
from annotate.models import Study, Turn
from annotate.services import ActionRefused
from labeling import selectors, services
from labeling.models import ReviewAssignment, Tag


def _assignment_for(request: HttpRequest, pk: int) -> ReviewAssignment:
    """The rater's own review, or 404 for anyone else's (no hint that it exists)."""
    return get_object_or_404(
        ReviewAssignment.objects.select_related("conversation__study", "conversation__scenario"),
        pk=pk,
        rater=request.user,
    )


def _refused(request: HttpRequest, exc: ActionRefused) -> HttpResponse:
    return render(request, "annotate/error_page.html", {"error": exc.message}, status=exc.status)


@login_required
@require_GET
def review_home(request: HttpRequest) -> HttpResponse:
    return render(
        request,
        "labeling/review_home.html",
        {"work": selectors.review_overview(request.user), "reviews": selectors.rater_reviews(request.user)[:100]},
    )


@login_required
@require_POST
def review_next(request: HttpRequest, slug: str) -> HttpResponse:
    study = get_object_or_404(Study, slug=slug)
    try:
        assignment = services.review_claim(rater=request.user, study=study)
    except ActionRefused as exc:
        return _refused(request, exc)
    return redirect("labeling:review_detail", pk=assignment.pk)


@login_required
@require_GET
def review_detail(request: HttpRequest, pk: int) -> HttpResponse:
    assignment = _assignment_for(request, pk)
    conversation = assignment.conversation
    study = conversation.study
    turns = selectors.review_turns(conversation, all_branches=study.review_all_branches)
    path = annotate_selectors.lived_path(conversation)
    on_path = {t.pk for t in path}
    labels = selectors.labels_for(study)
    tags = selectors.tags_by_turn(turn_ids=[t.pk for t in turns], rater=request.user, task=Tag.Task.REVIEW)
    rows: list[dict[str, Any]] = [
        {
            "turn": turn,
            "on_path": turn.pk in on_path,
            "taggable": assignment.status == ReviewAssignment.Status.OPEN
            and (turn.role == Turn.Role.USER or turn.status == Turn.Status.DONE),
            "tags": tags.get(turn.pk, []),
            "labels": [label for label in labels if label.applies_to(turn.role)],
            # Links point back at what the rater saw: earlier turns of the lived path.
            "linkable": [t for t in path if t.depth < turn.depth],
        }
        for turn in turns
    ]
    return render(
        request,
        "labeling/review_detail.html",
        {"assignment": assignment, "conversation": conversation, "study": study, "rows": rows},
    )


@login_required
@require_POST
def review_done(request: HttpRequest, pk: int) -> HttpResponse:
    try:
        services.review_finish(rater=request.user, assignment_id=pk)
    except ActionRefused as exc:
        return _refused(request, exc)
    return redirect("labeling:review_home")
