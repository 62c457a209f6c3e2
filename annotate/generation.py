"""Sampling one candidate turn, safely under redelivery and worker crashes.

A task may run twice for one turn: the broker hands a message out again when the worker that
held it died (``acks_late`` + ``task_reject_on_worker_lost``). Every claim therefore bumps
``Turn.attempt`` in one conditional UPDATE, and every later write is conditional on that attempt,
so at most one attempt can finish a turn and a superseded attempt stops at its next token.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

from django.conf import settings
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from annotate import selectors, signals
from annotate.models import Turn
from workers.backends import GenerationError, GenerationRequest, GenerationResult, OnText, backend_for

log = logging.getLogger(__name__)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def turn_claim(*, turn_id: int, redelivered: bool = False) -> int | None:
    """Take the turn for this process; returns the attempt number, or None if not ours to run.

    Pending turns are claimable. A streaming turn is claimable when its lease ran out (no token
    written for TURN_LEASE_SECONDS) or when the broker says this message is a redelivery, i.e.
    the worker that held it is gone.
    """
    now = timezone.now()
    stale = Q(heartbeat_at__lt=now - timedelta(seconds=settings.TURN_LEASE_SECONDS)) | Q(heartbeat_at__isnull=True)
    takeover = Q(status=Turn.Status.STREAMING) & (Q() if redelivered else stale)
    claimable = Turn.objects.filter(pk=turn_id, role=Turn.Role.ASSISTANT)
    claimable = claimable.filter(Q(status=Turn.Status.PENDING) | takeover)
    updated = claimable.update(
        status=Turn.Status.STREAMING,
        attempt=F("attempt") + 1,
        claimed_by=worker_identity(),
        text="",
        error="",
        started_at=now,
        heartbeat_at=now,
        first_token_at=None,
    )
    if updated != 1:
        return None
    return Turn.objects.values_list("attempt", flat=True).get(pk=turn_id)


def turn_generate(*, turn_id: int, redelivered: bool = False) -> str:
    """Claim and sample one assistant turn. Returns what happened, for logs and tests."""
    attempt = turn_claim(turn_id=turn_id, redelivered=redelivered)
    if attempt is None:
        return _unclaimed(turn_id)
    turn = Turn.objects.select_related("model_config").get(pk=turn_id)
    # Every write below goes through `mine`: it matches nothing once another attempt claimed the turn.
    mine = Turn.objects.filter(pk=turn_id, attempt=attempt, status=Turn.Status.STREAMING)
    if redelivered and attempt > settings.TURN_MAX_CRASHES:
        # A message that kills its worker every time would otherwise be redelivered forever.
        return _fail(
            mine, f"The worker stopped {attempt - 1} times while writing this reply; retry, or tell the researcher."
        )
    on_text = _text_writer(mine)
    request = _request_for(turn)
    try:
        if turn.model_config is None:
            raise GenerationError("This turn has no model configuration")
        result = backend_for(turn.model_config).generate(request, on_text)
    except Exception as exc:  # the rater sees the message and may retry
        log.exception("Generation failed for turn %s", turn_id)
        return _fail(mine, str(exc) if isinstance(exc, GenerationError) else f"{type(exc).__name__}: {exc}")
    return _finish(mine, turn_id, result)


def _unclaimed(turn_id: int) -> str:
    """Why the claim failed: someone else holds a live lease ("busy": look again once it may have
    expired), or the turn is not one to run ("skipped": finished, failed, not a reply, or no such turn)."""
    busy = Turn.objects.filter(pk=turn_id, status=Turn.Status.STREAMING).exists()
    return "busy" if busy else "skipped"


def _text_writer(mine: QuerySet[Turn]) -> OnText:
    """The backend's `on_text`: store the text so far (the rater's page polls it) and the heartbeat that
    keeps the lease, stamp the first token once, and say stop when this attempt no longer holds the turn."""
    first_token_written = False

    def on_text(text: str) -> bool:
        nonlocal first_token_written
        now = timezone.now()
        fields: dict[str, object] = {"text": text, "heartbeat_at": now}
        if not first_token_written:
            fields["first_token_at"] = now
            first_token_written = True
        return mine.update(**fields) == 1

    return on_text


def _request_for(turn: Turn) -> GenerationRequest:
    """What the model is asked: the path above the turn, with the system prompt, parameters and seed
    stored on the turn, so the row records exactly what the sample was drawn with."""
    return GenerationRequest(
        messages=selectors.messages_before(turn),
        system_prompt=turn.system_prompt,
        params=turn.params,
        seed=turn.seed or 0,
    )


def _fail(mine: QuerySet[Turn], error: str) -> str:
    """Mark the turn failed with a message the rater sees (they may retry), if this attempt still holds it."""
    mine.update(status=Turn.Status.FAILED, error=error[:2000], finished_at=timezone.now())
    return "failed"


def _finish(mine: QuerySet[Turn], turn_id: int, result: GenerationResult) -> str:
    """Store the finished reply if this attempt still holds the turn, and only then announce it."""
    if result.stopped_early:
        return "superseded"
    if not result.text:
        return _fail(mine, "The model returned an empty reply.")
    finished = mine.update(
        status=Turn.Status.DONE,
        text=result.text,
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        finished_at=timezone.now(),
    )
    if finished == 1:
        signals.turn_finished.send(sender=Turn, turn_id=turn_id)
    return "done" if finished == 1 else "superseded"
