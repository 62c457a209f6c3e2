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
import time
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from annotate import live, selectors, signals
from annotate.models import Conversation, Turn
from workers.backends import (
    GenerationError,
    GenerationRequest,
    GenerationResult,
    OnText,
    backend_for,
    generate_all,
    model_ready,
    runs_locally,
)
from workers.identity import IdentityCheck, identity_check

log = logging.getLogger(__name__)


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class TurnInterrupted(Exception):
    """The database failed while this attempt held the turn (a restart, no connection left): the task
    retries with backoff and takes the turn up again (`turn_claim(held_attempt=...)`) instead of being
    acknowledged as done with the turn left streaming."""

    def __init__(self, attempt: int | None) -> None:
        super().__init__(f"database error while holding attempt {attempt}")
        self.attempt = attempt


def turn_claim(*, turn_id: int, redelivered: bool = False, held_attempt: int | None = None) -> int | None:
    """Take the turn for this process; returns the attempt number, or None if not ours to run.

    Pending turns are claimable. A streaming turn is claimable when its lease ran out (no token
    written for TURN_LEASE_SECONDS), when the broker says this message is a redelivery, i.e.
    the worker that held it is gone, or when it is still at `held_attempt`: the attempt this task held
    when the database failed under it (nobody took it over since).
    """
    now = timezone.now()
    stale = Q(heartbeat_at__lt=now - timedelta(seconds=settings.TURN_LEASE_SECONDS)) | Q(heartbeat_at__isnull=True)
    if held_attempt is not None:
        stale |= Q(attempt=held_attempt)
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
    attempt = Turn.objects.values_list("attempt", flat=True).get(pk=turn_id)
    # The rater's page learns the reply started (again: attempt > 1 says it was retried).
    live.publish(live.turn_state(id=turn_id, status=Turn.Status.STREAMING, text="", heartbeat_at=now, attempt=attempt))
    return attempt


def turn_generate(*, turn_id: int, redelivered: bool = False, held_attempt: int | None = None) -> str:
    """Claim and sample one assistant turn. Returns what happened, for logs and tests.

    A database error raises TurnInterrupted (with the attempt held, if any) for the task to retry."""
    try:
        attempt = turn_claim(turn_id=turn_id, redelivered=redelivered, held_attempt=held_attempt)
    except DatabaseError as exc:
        raise TurnInterrupted(held_attempt) from exc
    if attempt is None:
        return _unclaimed(turn_id)
    try:
        return _generate(turn_id, attempt, redelivered=redelivered)
    except DatabaseError as exc:
        log.warning("Database error while generating turn %s (attempt %s); retrying", turn_id, attempt)
        raise TurnInterrupted(attempt) from exc


def _generate(turn_id: int, attempt: int, *, redelivered: bool) -> str:
    turn = Turn.objects.select_related("model_config", "conversation").get(pk=turn_id)
    # Every write below goes through `mine`: it matches nothing once another attempt claimed the turn.
    mine = Turn.objects.filter(pk=turn_id, attempt=attempt, status=Turn.Status.STREAMING)
    if redelivered and attempt > settings.TURN_MAX_CRASHES:
        # A message that kills its worker every time would otherwise be redelivered forever.
        return _fail(
            mine,
            turn_id,
            f"The worker stopped {attempt - 1} times while writing this reply; retry, or tell the researcher.",
        )
    if turn.conversation.status != Conversation.Status.ACTIVE:  # nobody will read it: sample nothing
        return _fail(mine, turn_id, RATER_LEFT)
    if turn.model_config is None:
        return _fail(mine, turn_id, "This turn has no model configuration")
    batched = runs_locally(turn.model_config.backend) and settings.GENERATION_BATCH_SIZE > 1
    riders = _riders_claim(turn) if batched else []
    group = [(turn, attempt), *riders]
    held = {t.pk: Turn.objects.filter(pk=t.pk, attempt=a, status=Turn.Status.STREAMING) for t, a in group}
    checks = {t.pk: _identity_check(t) for t, _ in group}
    writers = [_text_writer(held[t.pk], t.pk, a, identity=checks[t.pk]) for t, a in group]
    requests = [_request_for(t) for t, _ in group]
    backend = backend_for(turn.model_config)
    if not model_ready(turn.model_config):  # a load takes up to a minute: the raters see that, not silence
        ids = [t.pk for t, _ in group]
        Turn.objects.filter(pk__in=ids, status=Turn.Status.STREAMING).update(note=MODEL_LOADING_NOTE)
        live.announce(ids)
    connection_between_writes()  # the model takes a while: hold no connection meanwhile
    try:
        results = generate_all(backend, requests, writers)
    except DatabaseError:
        raise  # not the model's fault: the task retries (TurnInterrupted); riders wait for the sweep
    except Exception as exc:  # the rater sees the message and may retry
        log.exception("Generation failed for turn %s", turn_id)
        error = str(exc) if isinstance(exc, GenerationError) else f"{type(exc).__name__}: {exc}"
        outcomes = [_fail(held[t.pk], t.pk, error) for t, _ in group]
    else:
        outcomes = [
            _finish(held[t.pk], t.pk, result, identity=checks[t.pk])
            for (t, _), result in zip(group, results, strict=True)
        ]
    return outcomes[0]  # this task's own reply; the riders' outcomes are in their rows


# A reply whose conversation ended (completed, abandoned, expired) before it finished.
RATER_LEFT = "Stopped: the rater left the conversation."

MODEL_LOADING_NOTE = "loading the model (the first reply after a start takes up to a minute)"


# A reply sampled in another's batch is marked in `claimed_by`: its own task then has nothing to do.
RIDER_MARK = " in the batch of turn "


def _riders_claim(turn: Turn) -> list[tuple[Turn, int]]:
    """Dynamic batching: claim up to GENERATION_BATCH_SIZE - 1 other replies waiting for the same model with
    the same parameters (the oldest first, across raters; rows another worker is claiming are skipped), to be
    sampled in one batch with `turn`. Their own tasks find them taken (`_unclaimed`: "riding"); if this worker
    is lost, the recovery sweep hands them out again after the lease. Returns (turn, attempt) pairs."""
    now = timezone.now()
    with transaction.atomic():
        waiting = (
            Turn.objects.filter(
                role=Turn.Role.ASSISTANT,
                status=Turn.Status.PENDING,
                model_config_id=turn.model_config_id,
                params=turn.params,
                is_attention_check=False,
                # Not a left conversation's (a subquery, so only turn rows are locked, not conversations).
                conversation__in=Conversation.objects.filter(status=Conversation.Status.ACTIVE),
            )
            .exclude(pk=turn.pk)
            .order_by("created_at", "pk")
            .select_for_update(skip_locked=True)
        )
        ids = list(waiting.values_list("pk", flat=True)[: settings.GENERATION_BATCH_SIZE - 1])
        if not ids:
            return []
        Turn.objects.filter(pk__in=ids, status=Turn.Status.PENDING).update(
            status=Turn.Status.STREAMING,
            attempt=F("attempt") + 1,
            claimed_by=f"{worker_identity()}{RIDER_MARK}{turn.pk}",
            text="",
            error="",
            started_at=now,
            heartbeat_at=now,
            first_token_at=None,
        )
    riders = list(Turn.objects.filter(pk__in=ids).select_related("model_config").order_by("created_at", "pk"))
    live.announce(ids)
    return [(rider, rider.attempt) for rider in riders]


def _unclaimed(turn_id: int) -> str:
    """Why the claim failed: the reply is being sampled in another's batch ("riding": nothing to do), someone
    else holds a live lease ("busy": look again once it may have expired), or the turn is not one to run
    ("skipped": finished, failed, not a reply, or no such turn)."""
    row = Turn.objects.filter(pk=turn_id, status=Turn.Status.STREAMING).values_list("claimed_by", flat=True).first()
    if row is None:
        return "skipped"
    return "riding" if RIDER_MARK in row else "busy"


def connection_between_writes() -> None:
    """Give a pooled connection back between row writes: a threads worker sampling dozens of replies from model
    servers then holds at most its pool's connections (each write takes one for a moment). Without a pool the
    connection stays (reconnecting for every write would cost more than it saves)."""
    if connection.settings_dict.get("OPTIONS", {}).get("pool") and not connection.in_atomic_block:
        connection.close()


def _identity_check(turn: Turn) -> IdentityCheck | None:
    """How a reply is checked for its model's own names (`workers.identity`): masked in an arena study, only
    flagged in others; None when the config lists no names."""
    config = turn.model_config
    if config is None or not config.identity_names:
        return None
    arena = Conversation.objects.filter(pk=turn.conversation_id).values_list("study__arena", flat=True).first()
    return identity_check(config.identity_names, mask=bool(arena))


def _text_writer(mine: QuerySet[Turn], turn_id: int, attempt: int, *, identity: IdentityCheck | None = None) -> OnText:
    """The backend's `on_text`: send the text so far to the rater's stream, store it with the heartbeat that
    keeps the lease, stamp the first token once, and say stop when this attempt no longer holds the turn.

    Coalesced: the first token at once, then the rater gets the text at most every STREAM_WRITE_SECONDS. With
    a feed (annotate.live) it goes out on Redis and the row is written only every STREAM_SAVE_SECONDS (a
    reconnecting stream starts from the row and catches up at the next publish): 100 streaming replies cost
    ~100 UPDATEs a second, not ~1,000 (or one per token). Without a feed the streams poll the row, so each send
    is a write. The last text always goes with the finish (`_finish`). With `identity`, the text is written and
    streamed as it says (masked in arena studies): the rater never sees a model's own name."""
    save_every = settings.STREAM_WRITE_SECONDS
    if settings.STREAM_REDIS_URL:  # the save keeps the lease: four times per lease at least
        save_every = min(settings.STREAM_SAVE_SECONDS, settings.TURN_LEASE_SECONDS / 4)
    first_token_written = False
    last_sent = last_saved = 0.0
    held = True
    # Still one conditional UPDATE per write: it also matches nothing once the rater left the conversation.
    writes = mine.filter(conversation__status=Conversation.Status.ACTIVE)

    def on_text(text: str) -> bool:
        nonlocal first_token_written, last_sent, last_saved, held
        clock = time.monotonic()
        if first_token_written and clock - last_sent < settings.STREAM_WRITE_SECONDS:
            return held
        last_sent = clock
        now = timezone.now()
        if identity is not None:
            text = identity(text)[0]
        if not first_token_written or clock - last_saved >= save_every:
            fields: dict[str, object] = {"text": text, "heartbeat_at": now}
            if not first_token_written:
                fields["first_token_at"] = now
                fields["note"] = ""  # the model is loaded: the text speaks for itself
                first_token_written = True
            last_saved = clock
            held = writes.update(**fields) == 1
            if not held:  # taken over, or the rater left: only the latter is this attempt's to end
                _stop_if_left(mine, turn_id)
            connection_between_writes()
        if held:  # between saves a takeover goes unseen for a moment: streams drop an older attempt's states
            live.publish(live.turn_state(id=turn_id, status=Turn.Status.STREAMING, text=text, heartbeat_at=now,
                                         attempt=attempt))  # fmt: skip
        return held

    return on_text


def _stop_if_left(mine: QuerySet[Turn], turn_id: int) -> None:
    """Fail a reply this attempt holds whose conversation is over, with the reason: otherwise it would stay
    STREAMING until the recovery sweep sent it to a worker again, for a rater who is gone."""
    left = mine.exclude(conversation__status=Conversation.Status.ACTIVE)
    if left.update(status=Turn.Status.FAILED, error=RATER_LEFT, note="", finished_at=timezone.now()):
        live.announce([turn_id])


def _request_for(turn: Turn) -> GenerationRequest:
    """What the model is asked: the path above the turn, with the system prompt, parameters and seed
    stored on the turn, so the row records exactly what the sample was drawn with."""
    return GenerationRequest(
        messages=selectors.messages_before(turn),
        system_prompt=turn.system_prompt,
        params=turn.params,
        seed=turn.seed or 0,
    )


def _fail(mine: QuerySet[Turn], turn_id: int, error: str) -> str:
    """Mark the turn failed with a message the rater sees (they may retry), if this attempt still holds it."""
    if mine.update(status=Turn.Status.FAILED, error=error[:2000], note="", finished_at=timezone.now()):
        live.announce([turn_id])
    return "failed"


def _finish(
    mine: QuerySet[Turn], turn_id: int, result: GenerationResult, *, identity: IdentityCheck | None = None
) -> str:
    """Store the finished reply if this attempt still holds the turn, and only then announce it; with `identity`,
    as it says (masked in arena studies), flagged when it names its own model."""
    if result.stopped_early:
        return "superseded"
    if not result.text:
        return _fail(mine, turn_id, "The model returned an empty reply.")
    text, leaked = identity(result.text) if identity is not None else (result.text, False)
    finished = mine.update(
        status=Turn.Status.DONE,
        text=text,
        identity_leak=leaked,
        note="",
        prompt_tokens=result.prompt_tokens,
        completion_tokens=result.completion_tokens,
        finished_at=timezone.now(),
    )
    if finished == 1:
        live.announce([turn_id])
        signals.turn_finished.send(sender=Turn, turn_id=turn_id)
    return "done" if finished == 1 else "superseded"
