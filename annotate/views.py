"""Rater-facing views. Thin: parse the request, call a service, render a page or fragment.

htmx requests get the ``#session`` fragment back (or, on a refused action, an error fragment
retargeted to ``#errors`` with a 4xx status); plain form posts get a redirect or the full page,
so the session also works without JavaScript (minus live streaming).
"""

from __future__ import annotations

import uuid
from typing import Any, cast

from asgiref.sync import sync_to_async
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST
from django_htmx.http import reswap, retarget

from annotate import live, panel, selectors, services, signals
from annotate.models import Comparison, Conversation, Study, Turn
from core.errors import ActionRefused
from core.http import AppRequest, answers_refusals, refused_fragment, refused_page
from core.ratelimit import rate_limited
from core.validation import is_id, parse_int, parse_request_key


def _conversation_for(request: AppRequest, pk: int) -> Conversation:
    """The rater's own conversation, or 404 for anyone else's (no hint that it exists)."""
    return get_object_or_404(
        Conversation.objects.select_related("study", "scenario", "head"), pk=pk, rater=request.user
    )


def _session_context(
    conversation: Conversation, error: str = "", *, path: list[Turn] | None = None, shown: list[Turn] | None = None
) -> dict[str, Any]:
    """What the session templates show. `shown`: the turns of the path this answer renders (all by default);
    the tags are read for those and the candidates only."""
    path = selectors.lived_path(conversation) if path is None else path
    awaiting = selectors.awaiting_vote(conversation, path)
    candidates = selectors.candidates_of(awaiting) if awaiting else []
    user_turns = sum(1 for t in path if t.role == Turn.Role.USER)
    context: dict[str, Any] = {
        "conversation": conversation,
        "study": conversation.study,
        "scenario": conversation.scenario,
        "path": path,
        "awaiting": awaiting,
        "candidates": candidates,
        "streaming": any(not c.is_finished for c in candidates),
        "all_done": bool(candidates) and all(c.status == Turn.Status.DONE for c in candidates),
        "user_turns": user_turns,
        "turns_left": max(conversation.study.max_user_turns - user_turns, 0),
        "request_key": uuid.uuid4(),
        "error": error,
        "goal_choices": Conversation.Goal.choices,
        "rewrite_max_chars": services.rewrite_limit(conversation.study),
    }
    context.update(_higher_layers(conversation, [*(path if shown is None else shown), *candidates]))
    return context


def _higher_layers(conversation: Conversation, turns: list[Turn]) -> dict[str, Any]:
    """What higher layers show with these turns (labeling: the tag bars' labels and the rater's tags)."""
    context: dict[str, Any] = {}
    for _, extra in signals.session_rendering.send(sender=Conversation, conversation=conversation, turns=turns):
        context.update(cast(dict[str, Any], extra))
    return context


def _whole_session(request: AppRequest, context: dict[str, Any], status: int = 200) -> HttpResponse:
    """The whole session fragment, put in place of the page's (a stale tab, another branch)."""
    response = render(request, "annotate/_session.html", context, status=status)
    return reswap(retarget(response, "#session"), "outerHTML")


# What a rater's action may change on the conversation (its head, status, times…): all but whose it is.
_CHANGING = [f.name for f in Conversation._meta.concrete_fields if f.name not in ("id", "study", "scenario", "rater")]


def _respond(request: AppRequest, conversation: Conversation, notice: str = "") -> HttpResponse:
    """After a successful action: for htmx, what changed (the composer, and out of band the turns the path gained
    since the form was shown: `_session_update.html`), or the whole session when the page did not say what it
    shows or shows another branch (a stale tab); a redirect for a plain form."""
    if not request.htmx:
        if notice:
            messages.info(request, notice)
        return redirect("annotate:conversation", pk=conversation.pk)
    conversation.refresh_from_db(fields=_CHANGING)  # study, scenario and rater stay as read (no queries)
    path = selectors.lived_path(conversation)
    new_turns = _turns_after(path, request.POST.get("shown"))
    if new_turns is None:
        return _whole_session(request, {**_session_context(conversation, path=path), "notice": notice})
    # A new message folds the feedback buttons of the message before it (only the latest shows them unfolded).
    first_new_user = next((t for t in new_turns if t.role == Turn.Role.USER), None)
    earlier_users = [t for t in path[: len(path) - len(new_turns)] if t.role == Turn.Role.USER and t.depth > 0]
    refolded = earlier_users[-1:] if first_new_user is not None else []
    context = _session_context(conversation, path=path, shown=[*new_turns, *refolded])
    context.update(new_turns=new_turns, refolded=refolded, first_turns=len(new_turns) == len(path) > 0, notice=notice)
    return render(request, "annotate/_session_update.html", context)


def _turns_after(path: list[Turn], shown: str | None) -> list[Turn] | None:
    """The turns of `path` below the one the page showed last (`shown`: its id, "" for none yet), or None when
    that is unknown or not on the path."""
    if shown is None:
        return None
    if shown == "":
        return path
    ids = [t.pk for t in path]
    if not is_id(shown) or int(shown) not in ids:
        return None
    return path[ids.index(int(shown)) + 1 :]


def _session_refreshed(request: AppRequest, exc: ActionRefused, pk: int, **_: Any) -> HttpResponse:
    """An htmx action refused because the page was stale (409: a vote already cast in another tab, replies no
    longer awaiting a choice): the whole current session with the message, so the tab catches up."""
    conversation = _conversation_for(request, pk)
    if conversation.status != Conversation.Status.ACTIVE:
        return refused_fragment(request, exc)
    return _whole_session(request, _session_context(conversation, exc.message), status=exc.status)


def _session_page(request: AppRequest, exc: ActionRefused, pk: int, **_: Any) -> HttpResponse:
    """A refused plain form post: the whole session page again, with the message above the form (a conversation
    that has ended or expired has no form left: the message on a page of its own)."""
    conversation = _conversation_for(request, pk)
    if conversation.status != Conversation.Status.ACTIVE:
        return refused_page(request, exc)
    return render(request, "annotate/conversation.html", _session_context(conversation, exc.message), status=exc.status)


@login_required
@require_GET
def home(request: AppRequest) -> HttpResponse:
    participant_step = panel.participant_home_url(request.user)
    if participant_step:  # a panel participant sees their own study's steps, never the list of studies
        return redirect(participant_step)
    studies = list(selectors.open_studies())
    context: dict[str, Any] = {"studies": studies, "conversations": selectors.rater_conversations(request.user)[:100]}
    # What higher layers add (labeling: the studies whose qualification the rater has to take first).
    for _, extra in signals.home_rendering.send(sender=Study, user=request.user, studies=studies):
        context.update(cast(dict[str, Any], extra))
    return render(request, "annotate/home.html", context)


@login_required
@require_POST
@answers_refusals
def study_start(request: AppRequest, slug: str) -> HttpResponse:
    study = get_object_or_404(Study, slug=slug, is_active=True)
    panel.direct_start_check(study, request.user)
    conversation = services.conversation_start(study=study, rater=request.user)
    return redirect("annotate:conversation", pk=conversation.pk)


@login_required
@require_GET
def conversation_detail(request: AppRequest, pk: int) -> HttpResponse:
    conversation = _conversation_for(request, pk)
    if conversation.status == Conversation.Status.EXPIRED and request.htmx:
        # The session fragment asked for by an open page: say why it stopped, in the page's #errors.
        return refused_fragment(request, ActionRefused(services.expired_message(conversation.study), status=409))
    if conversation.status != Conversation.Status.ACTIVE:
        return redirect("annotate:transcript", pk=pk)  # an expired one says so there
    if request.htmx and request.GET.get("part") == "composer":  # after a stream ended: the vote, enabled
        return render(request, "annotate/_composer.html", _session_context(conversation, shown=[]))
    template = "annotate/_session.html" if request.htmx else "annotate/conversation.html"
    return render(request, template, _session_context(conversation))


@login_required
@require_POST
@answers_refusals(page=_session_page, stale=_session_refreshed)
@rate_limited("messages")
def message_send(request: AppRequest, pk: int) -> HttpResponse:
    conversation = _conversation_for(request, pk)
    services.message_send(
        conversation=conversation,
        text=request.POST.get("text", ""),
        client_key=parse_request_key(request.POST.get("client_key")),
    )
    return _respond(request, conversation)


@login_required
@require_POST
@answers_refusals(page=_session_page, stale=_session_refreshed)
@rate_limited("votes")
def vote(request: AppRequest, pk: int) -> HttpResponse:
    conversation = _conversation_for(request, pk)
    post = request.POST
    choice = post.get("choice", "")
    chosen_id = None
    if is_id(choice):  # the form sends a candidate's id for "this one is better"
        chosen_id, choice = int(choice), Comparison.Choice.CANDIDATE
    comparison = services.comparison_record(
        conversation=conversation,
        rater=request.user,
        parent_id=parse_int(post.get("parent"), name="parent") or 0,
        choice=choice,
        chosen_id=chosen_id,
        strength=post.get("strength", ""),
        reason=post.get("reason", ""),
        rewrite_text=post.get("rewrite", "") if post.get("use_rewrite") else "",
        continue_from_id=parse_int(post.get("continue_from"), name="continue_from"),
        idempotency_key=parse_request_key(post.get("idempotency_key")),
    )
    notice = _tie_notice(comparison)
    if conversation.study.arena:  # the names, now that the vote is in (and final)
        notice = " ".join(filter(None, [services.arena_reveal(comparison), notice]))
    return _respond(request, conversation, notice=notice)


def _tie_notice(comparison: Comparison) -> str:
    """After "tie" or "both bad" the rater is told what the conversation goes on from (nothing was preferred)."""
    if comparison.chosen_id is not None or comparison.continued_from is None:
        return ""
    continued = comparison.continued_from
    what = "your rewrite" if continued.is_rewrite else f"Reply {continued.label}"
    return f"You chose “{comparison.get_choice_display()}”: the conversation goes on from {what}."


@login_required
@require_POST
@answers_refusals(page=_session_page, stale=_session_refreshed)
def turn_retry(request: AppRequest, pk: int, turn_id: int) -> HttpResponse:
    conversation = _conversation_for(request, pk)
    services.turn_retry(conversation=conversation, turn_id=turn_id)
    return _respond(request, conversation)


@login_required
@require_POST
@answers_refusals(page=_session_page, stale=_session_refreshed)
def conversation_finish(request: AppRequest, pk: int) -> HttpResponse:
    conversation = _conversation_for(request, pk)
    services.conversation_finish(
        conversation=conversation,
        goal=request.POST.get("goal", ""),
        understanding=request.POST.get("understanding"),
        comment=request.POST.get("comment", ""),
    )
    # A panel participant goes on to their next step (the done page, or the next conversation).
    next_url = panel.url_after_finish(conversation) or reverse("annotate:transcript", kwargs={"pk": conversation.pk})
    if request.htmx:
        response = HttpResponse(status=204)
        response["HX-Redirect"] = next_url
        return response
    return redirect(next_url)


@login_required
@require_GET
def transcript(request: AppRequest, pk: int) -> HttpResponse:
    conversation = _conversation_for(request, pk)
    steps = selectors.transcript(conversation)
    context: dict[str, Any] = {
        "conversation": conversation,
        "study": conversation.study,
        "steps": steps,
        "expired_message": services.expired_message(conversation.study)
        if conversation.status == Conversation.Status.EXPIRED
        else "",
    }
    # The rater's own tags, shown on each turn (labeling adds them, as for the session).
    turns = [turn for step in steps for turn in (cast(Turn, step["user"]), *cast(list[Turn], step["replies"]))]
    context.update(_higher_layers(conversation, turns))
    return render(request, "annotate/transcript.html", context)


# --- streaming ---------------------------------------------------------------------------


@login_required
async def stream(request: AppRequest, pk: int) -> StreamingHttpResponse:
    """Server-sent events with the text of the candidates answering the latest user message."""
    user = await request.auser()
    conversation = await Conversation.objects.select_related("head").filter(pk=pk, rater_id=user.pk).afirst()
    if conversation is None:
        raise Http404("No such conversation")
    awaiting = selectors.awaiting_vote(conversation)
    turn_ids = [] if awaiting is None else [t.pk async for t in awaiting.children.filter(is_rewrite=False)]
    await sync_to_async(live.release_connection)()  # the stream holds no connection while it waits
    response = StreamingHttpResponse(live.turn_events(turn_ids), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response
