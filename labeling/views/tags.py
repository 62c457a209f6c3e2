"""Tagging endpoints, shared by the live session and the review pass.

htmx requests get the turn's tag bar back (``labeling/_tag_bar.html``, swapped by its id), or an
error fragment retargeted to the page's ``#errors`` with a 4xx status; plain form posts are
redirected back to the page they came from.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from annotate import tree
from annotate.models import Turn
from core.errors import ActionRefused
from core.http import AppRequest, answers_refusals
from core.ratelimit import rate_limited
from core.validation import parse_int
from labeling import selectors, services
from labeling.models import Tag


def _param(request: AppRequest, name: str) -> str | None:
    # Buttons inside another form (the vote form) post that form, with turn and task in the query.
    value = request.POST.get(name)
    return value if value not in (None, "") else request.GET.get(name)


def _int(request: AppRequest, name: str) -> int | None:
    return parse_int(_param(request, name), name=name)


def _text_offset(text: str, shown: int | None) -> int | None:
    """Browsers show CRLF and lone CR as one LF (HTML parsing): map an offset in what they show onto the text."""
    if shown is None or "\r" not in text or shown < 0:
        return shown
    starts = [i for i, ch in enumerate(text) if not (ch == "\n" and i > 0 and text[i - 1] == "\r")]
    starts.append(len(text))
    return starts[shown] if shown < len(starts) else len(text) + shown - len(starts) + 1


def _turns_above(turn: Turn) -> list[Turn]:
    """The path from the first message down to the turn's parent: what a tag on it may link to."""
    above = Turn.objects.filter(conversation_id=turn.conversation_id, depth__lt=turn.depth)
    return tree.path_to({t.pk: t for t in above.only("id", "parent_id", "role", "depth", "text")}, turn.parent_id)


def _tag_bar(request: AppRequest, turn: Turn, task: str) -> HttpResponse:
    context = {
        "turn": turn,
        "task": task,
        "tags": selectors.tags_by_turn(turn_ids=[turn.pk], rater_id=request.user.pk, task=task).get(turn.pk, []),
        "labels": selectors.labels_for(turn.conversation.study),
        "linkable": _turns_above(turn),
        # as in the live session: only the latest message shows its label buttons unfolded
        "collapsed": task == Tag.Task.LIVE
        and turn.role == Turn.Role.USER
        and Turn.objects.filter(
            conversation_id=turn.conversation_id, role=Turn.Role.USER, depth__gt=turn.depth
        ).exists(),
    }
    return render(request, "labeling/_tag_bar.html", context)


def _respond(request: AppRequest, turn: Turn, task: str) -> HttpResponse:
    if request.htmx:
        return _tag_bar(request, turn, task)
    back = request.headers.get("referer", "")
    if url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return redirect(back)
    if task == Tag.Task.LIVE:
        return redirect("annotate:conversation", pk=turn.conversation_id)
    return redirect("labeling:review_home")


@login_required
@require_POST
@answers_refusals
@rate_limited("tags")
def tag_add(request: AppRequest) -> HttpResponse:
    task = _param(request, "task") or Tag.Task.LIVE
    turn_id = _int(request, "turn")
    if turn_id is None:
        raise ActionRefused("Say which turn to tag.")
    label = _param(request, "label") or ""
    if not label:
        raise ActionRefused("Say which label to put on the turn.")
    span_start, span_end = _int(request, "span_start"), _int(request, "span_end")
    if span_start is not None or span_end is not None:  # offsets in what the browser shows: map them onto the text
        turn = Turn.objects.filter(pk=turn_id).only("text").first()
        text = turn.text if turn else ""
        span_start, span_end = _text_offset(text, span_start), _text_offset(text, span_end)
    tag = services.tag_add(
        rater=request.user,
        turn_id=turn_id,
        label=label,
        task=task,
        span_start=span_start,
        span_end=span_end,
        linked_turn_id=_int(request, "linked_turn"),
    )
    return _respond(request, tag.turn, tag.task)


@login_required
@require_POST
@answers_refusals
@rate_limited("tags")
def tag_remove(request: AppRequest, pk: int) -> HttpResponse:
    tag = Tag.objects.select_related("turn__conversation__study").filter(pk=pk, rater=request.user).first()
    if tag is None:
        raise ActionRefused("No such tag.", status=404)
    services.tag_remove(rater=request.user, tag_id=pk)
    return _respond(request, tag.turn, tag.task)


@login_required
@require_POST
@answers_refusals
@rate_limited("tags")
def suggestion_decide(request: AppRequest, pk: int) -> HttpResponse:
    answer = _param(request, "accept")
    if answer not in ("1", "0"):
        raise ActionRefused("Say whether to accept (accept=1) or reject (accept=0) the suggestion.")
    tag = services.suggestion_decide(rater=request.user, tag_id=pk, accept=answer == "1")
    return _respond(request, tag.turn, tag.task)
