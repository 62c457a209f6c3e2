"""The review pass: a rater claims a finished conversation of someone else's, tags it turn by turn and
gives their own preference at each branch point (the replies to each user message).

The vote form is one fragment per user turn (``labeling/_review_vote.html``, id ``review-vote-<turn>``):
htmx swaps it with the saved vote, or with the refusal shown inside it and a 4xx status."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from annotate import panel
from annotate import selectors as annotate_selectors
from annotate.models import Comparison, Study, Turn
from core.errors import ActionRefused
from core.http import AppRequest, answers_refusals, refused_fragment, refused_page
from core.ratelimit import rate_limited
from core.validation import is_id, parse_int, parse_request_key
from labeling import selectors, services
from labeling.models import ReviewAssignment, Tag


def _raters_only(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Keep panel participants out of the review pass: their study link covers their own conversations (and
    the pay sheet counts those only). A page is sent on to their next step; an action is refused (403)."""

    @functools.wraps(view)
    def wrapper(request: AppRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if panel.is_panel_account(request.user):
            if request.method == "GET":
                return redirect(panel.participant_home_url(request.user) or "annotate:home")
            raise ActionRefused(
                "Reviews are done by the study's own raters: your study link covers your conversations only.",
                status=403,
            )
        return view(request, *args, **kwargs)

    return wrapper


def _assignment_for(request: AppRequest, pk: int) -> ReviewAssignment:
    """The rater's own review, or 404 for anyone else's (no hint that it exists)."""
    return get_object_or_404(
        ReviewAssignment.objects.select_related("conversation__study", "conversation__scenario"),
        pk=pk,
        rater=request.user,
    )


@login_required
@require_GET
@_raters_only
def review_home(request: AppRequest) -> HttpResponse:
    work = selectors.review_overview(request.user)
    context = {
        "work": work,
        "empty_reasons": [] if work else selectors.review_empty_reasons(request.user),
        "reviews": selectors.rater_reviews(request.user)[:100],
    }
    return render(request, "labeling/review_home.html", context)


@login_required
@require_POST
@answers_refusals
@_raters_only
def review_next(request: AppRequest, slug: str) -> HttpResponse:
    study = get_object_or_404(Study, slug=slug)
    if selectors.attention_item_due(study, request.user) is not None:
        return redirect("labeling:review_check", slug=study.slug)
    assignment = services.review_claim(rater=request.user, study=study)
    return redirect("labeling:review_detail", pk=assignment.pk)


@login_required
@require_http_methods(["GET", "POST"])
@answers_refusals
@_raters_only
def review_check(request: AppRequest, slug: str) -> HttpResponse:
    """An attention gold item between reviews (`selectors.attention_item_due`): GET shows it, POST scores the
    answer and goes on to the next review (or the review list when none is left). Not due: the review list."""
    study = get_object_or_404(Study, slug=slug)
    if request.method == "POST":
        item_id = parse_int(request.POST.get("item"), name="item") or 0
        services.attention_answer(
            study=study, rater=request.user, item_id=item_id, label_ids=request.POST.getlist("labels")
        )
        try:
            assignment = services.review_claim(rater=request.user, study=study)
        except ActionRefused:
            return redirect("labeling:review_home")  # nothing left: the list says so
        return redirect("labeling:review_detail", pk=assignment.pk)
    item = selectors.attention_item_due(study, request.user)
    if item is None:
        return redirect("labeling:review_home")
    labels = [label for label in selectors.labels_for(study) if label.applies_to(Turn.Role.ASSISTANT)]
    return render(request, "labeling/review_check.html", {"study": study, "item": item, "labels": labels})


@login_required
@require_GET
@_raters_only
def review_detail(request: AppRequest, pk: int) -> HttpResponse:
    assignment = _assignment_for(request, pk)
    conversation = assignment.conversation
    study = conversation.study
    turns = selectors.review_turns(conversation, all_branches=study.review_all_branches)
    path = annotate_selectors.lived_path(conversation)
    on_path = {t.pk for t in path}
    labels = selectors.labels_for(study)
    tags = selectors.tags_by_turn(turn_ids=[t.pk for t in turns], rater_id=request.user.pk, task=Tag.Task.REVIEW)
    steps = selectors.review_vote_steps(conversation=conversation, rater=request.user, path=path)
    rows: list[dict[str, Any]] = [
        {
            "turn": turn,
            "on_path": turn.pk in on_path,
            # Blind by default: which reply the rater continued from would sway the reviewer's own judgement.
            "not_continued": study.reviewers_see_choice and turn.pk not in on_path,
            # On the lived path alone each message has one reply, the one continued from: its slot letter
            # would say which candidate of the vote form the rater chose.
            "slot": turn.label if study.reviewers_see_choice or study.review_all_branches else "",
            "taggable": assignment.status == ReviewAssignment.Status.OPEN
            and (turn.role == Turn.Role.USER or turn.status == Turn.Status.DONE),
            "tags": tags.get(turn.pk, []),
            "labels": [label for label in labels if label.offered_on(turn.role, turn.depth)],
            # Links point back at what the rater saw: earlier turns of the lived path.
            "linkable": [t for t in path if t.depth < turn.depth],
        }
        for turn in turns
    ]
    # A dozen label buttons under every turn make a long page: each turn's are folded away but the first
    # untagged one's, where the reviewer goes on (a tag's answer, `views.tags`, unfolds the turn worked on).
    working = next((row["turn"].pk for row in rows if row["taggable"] and not row["tags"]), None)
    for index, row in enumerate(rows):
        row["collapsed"] = row["turn"].pk != working
        # A user turn's vote form follows the last of its rows (the turn itself, then its replies).
        following = rows[index + 1]["turn"] if index + 1 < len(rows) else None
        turn = row["turn"]
        row["vote_form"] = None
        if following is None or following.role == Turn.Role.USER:
            step = steps.get(turn.pk if turn.role == Turn.Role.USER else turn.parent_id)
            row["vote_form"] = _vote_context(assignment, step) if step else None
    return render(
        request,
        "labeling/review_detail.html",
        {"assignment": assignment, "conversation": conversation, "study": study, "rows": rows},
    )


def _vote_context(assignment: ReviewAssignment, step: dict[str, Any], error: str = "") -> dict[str, Any]:
    """The vote form's context; which replies were continued from (`on_path`) only when the study lets
    reviewers see the original choice (`Study.reviewers_see_choice`)."""
    see_choice = assignment.conversation.study.reviewers_see_choice
    return {
        **step,
        "on_path": step["on_path"] if see_choice else set(),
        "assignment": assignment,
        "open": assignment.status == ReviewAssignment.Status.OPEN,
        "request_key": uuid.uuid4(),  # fresh per form shown: a resend of the same post stores one vote
        "error": error,
    }


@login_required
@require_POST
@answers_refusals  # the rate limit's refusal, into the page's #errors; the view answers its own
@_raters_only
@rate_limited("votes")
def review_vote(request: AppRequest, pk: int) -> HttpResponse:
    """Save the reviewer's vote on one user turn's replies; htmx gets the vote form back."""
    post = request.POST
    choice = post.get("choice", "")
    chosen_id = None
    if is_id(choice):  # as in the live form: a candidate's id means "this one is better"
        chosen_id, choice = int(choice), Comparison.Choice.CANDIDATE
    parent_id = None
    error: ActionRefused | None = None
    try:
        parent_id = parse_int(post.get("parent"), name="parent")
        key = parse_request_key(post.get("idempotency_key"))
        services.review_vote(
            rater=request.user,
            assignment_id=pk,
            parent_id=parent_id or 0,
            choice=choice,
            chosen_id=chosen_id,
            strength=post.get("strength", ""),
            reason=post.get("reason", ""),
            idempotency_key=key,
        )
    except ActionRefused as exc:
        error = exc
    assignment = (
        ReviewAssignment.objects.filter(pk=pk, rater=request.user).select_related("conversation__study").first()
    )
    step = None
    if assignment is not None and parent_id is not None:
        path = annotate_selectors.lived_path(assignment.conversation)
        steps = selectors.review_vote_steps(conversation=assignment.conversation, rater=request.user, path=path)
        step = steps.get(parent_id)
    if not request.htmx:
        if error is not None:
            return refused_page(request, error)
        return redirect(reverse("labeling:review_detail", args=[pk]) + f"#review-vote-{parent_id}")
    if assignment is None or step is None:
        # Someone else's review, or a turn that takes no vote: no form to show it in, so the page's #errors.
        error = error or ActionRefused("No such message in the conversation you are reviewing.", status=404)
        return refused_fragment(request, error)
    context = _vote_context(assignment, step, error.message if error else "")
    return render(request, "labeling/_review_vote.html", context, status=error.status if error else 200)


@login_required
@require_POST
@answers_refusals
@_raters_only
def review_done(request: AppRequest, pk: int) -> HttpResponse:
    services.review_finish(rater=request.user, assignment_id=pk)
    return redirect("labeling:review_home")
