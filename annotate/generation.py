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
from django.db.models import F, Q
from django.utils import timezone

from annotate import selectors, signals
from annotate.models import Turn
from workers.backends import GenerationError, GenerationRequest, backend_for

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
        # Someone else holds a live lease: the caller should look again once it may have expired.
        busy = Turn.objects.filter(pk=turn_id, status=Turn.Status.STREAMING).exists()
        return "busy" if busy else "skipped"
    turn = Turn.objects.select_related("model_config").get(pk=turn_id)
    mine = Turn.objects.filter(pk=turn_id, attempt=attempt, status=Turn.Status.STREAMING)
    if redelivered and attempt > settings.TURN_MAX_CRASHES:
        # A message that kills its worker every time would otherwise be redelivered forever.
        mine.update(
            status=Turn.Status.FAILED,
            error=f"The worker stopped {attempt - 1} times while writing this reply; retry, or tell the researcher.",
            finished_at=timezone.now(),
        )
        return "failed"
    first_token_written = False

    def on_text(text: str) -> bool:
        nonlocal first_token_written
        now = timezone.now()
        fields: dict[str, object] = {"text": text, "heartbeat_at": now}
        if not first_token_written:
            fields["first_token_at"] = now
            first_token_written = True
        return mine.update(**fields) == 1

    request = GenerationRequest(
        messages=selectors.messages_before(turn),
        system_prompt=turn.system_prompt,
        params=turn.params,
        seed=turn.seed or 0,
    )
    try:
        if turn.model_config is None:
            raise GenerationError("This turn has no model configuration")
        result = backend_for(turn.model_config).generate(request, on_text)
    except Exception as exc:  # the rater sees the message and may retry
        log.exception("Generation failed for turn %s", turn_id)
        message = str(exc) if isinstance(exc, GenerationError) else f"{type(exc).__name__}: {exc}"
        mine.update(status=Turn.Status.FAILED, error=message[:2000], finished_at=timezone.now())
        return "failed"
    if result.stopped_early:
        return "superseded"
    if not result.text:
        mine.update(status=Turn.Status.FAILED, error="The model returned an empty reply.", finished_at=timezone.now())
        return "failed"
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
