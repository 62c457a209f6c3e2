"""Writes for live rating sessions. Views, admin, commands and tasks all come through here.

Every function runs in one transaction and locks the conversation row first, so two requests
for one conversation (a double click, a resend) are serialised and the second sees the first.
"""

from __future__ import annotations

import csv
import io
import math
import random
import secrets
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import IntegrityError, models, transaction
from django.db.models import F, Q
from django.utils import timezone

from annotate import live, selectors, signals
from annotate.models import ArenaPair, Comparison, Conversation, Participant, Scenario, Study, Turn
from core.errors import ActionRefused
from core.tasks import task_send
from core.validation import check_storable, check_structure, clean_note, clean_text, parse_json
from workers.backends import generation_queue
from workers.models import ModelConfig

# Sent by name: tag suggestions belong to labeling, a layer above this one.
SAMPLE_TASK = "annotate.tasks.sample_turn_task"
SUGGEST_TASK = "labeling.tasks.suggest_tags_task"


def _locked(conversation: Conversation) -> Conversation:
    locked = (
        Conversation.objects.select_for_update(of=("self",)).select_related("study", "head").get(pk=conversation.pk)
    )
    if locked.status == Conversation.Status.EXPIRED:
        raise ActionRefused(expired_message(locked.study), status=409)
    if locked.status != Conversation.Status.ACTIVE:
        raise ActionRefused("This conversation has ended.", status=409)
    return locked


def conversation_touch(conversation_id: int) -> None:
    """Record activity on an active conversation now (expiry counts from its last activity): one UPDATE.
    For every action of its rater: message, vote, retry, and labeling's live tags."""
    Conversation.objects.filter(pk=conversation_id, status=Conversation.Status.ACTIVE).update(
        last_activity_at=timezone.now()
    )


def expired_message(study: Study) -> str:
    """What the rater of an expired conversation is told (its page, and any post to it: 409)."""
    return (
        f"This conversation has expired: it had no activity for {study.assignment_timeout_minutes} minutes, "
        "so its scenario went back to the pool for other raters. Start a new conversation from your studies page."
    )


def _enqueue(turn_ids: Iterable[int], *, suggest_for: int | None = None) -> None:
    """Send each reply's sampling task to its backend's queue (`workers.backends.generation_queue`), then the
    tag suggestions."""
    ids = list(turn_ids)
    backends = dict(Turn.objects.filter(pk__in=ids).values_list("pk", "model_config__backend"))
    for turn_id in ids:
        task_send(SAMPLE_TASK, turn_id, queue=generation_queue(backends.get(turn_id) or ""))
    if suggest_for is not None:  # after the samples: they are what the rater waits for
        task_send(SUGGEST_TASK, suggest_for)


def _pool(study: Study, k: int) -> list[ModelConfig]:
    """K configs from the study's enabled pool, in random order (distinct where possible); an arena study's
    next pair (`arena_pair`)."""
    if study.arena:
        return arena_pair(study)
    pool = list(study.model_pool.filter(enabled=True))
    if not pool:
        raise ActionRefused("This study has no enabled model configurations; tell the researcher.", status=409)
    random.shuffle(pool)
    return [pool[i % len(pool)] for i in range(k)]


ARENA_NEEDS_TWO = "This arena study needs two enabled models in its pool; tell the researcher."


def arena_pair(study: Study) -> list[ModelConfig]:
    """The two models answering an arena study's next message: of the enabled pool's pairs, one that has answered
    the fewest messages so far (ties drawn at random), its sides in random order.

    Counted per pair in `ArenaPair`, whose rows of the study are locked while one is chosen and counted (inside the
    caller's transaction): raters sending at once are served one after another, so the counts never differ by more
    than one whatever the concurrency, and a model added to the pool later catches up first.
    """
    pool = {config.pk: config for config in study.model_pool.filter(enabled=True)}
    if len(pool) < 2:
        raise ActionRefused(ARENA_NEEDS_TWO, status=409)
    ids = sorted(pool)
    ArenaPair.objects.bulk_create(
        [ArenaPair(study=study, first_id=a, second_id=b) for i, a in enumerate(ids) for b in ids[i + 1 :]],
        ignore_conflicts=True,
    )
    rows = list(
        ArenaPair.objects.select_for_update()
        .filter(study=study, first_id__in=ids, second_id__in=ids)
        .order_by("first_id", "second_id")
        .values_list("pk", "first_id", "second_id", "battles")
    )
    fewest = min(battles for *_, battles in rows)
    pk, first, second, _ = random.choice([row for row in rows if row[3] == fewest])
    ArenaPair.objects.filter(pk=pk).update(battles=F("battles") + 1)
    sides = [pool[first], pool[second]]
    random.shuffle(sides)
    return sides


def arena_reveal(comparison: Comparison) -> str:
    """What an arena rater is told once they voted: which model wrote which reply (their vote is final)."""
    replies = (
        comparison.parent.children.filter(is_rewrite=False, is_attention_check=False, model_config__isnull=False)
        .select_related("model_config")
        .order_by("position")
    )
    named = ", ".join(f"Reply {reply.label} was {reply.model_config.name}" for reply in replies if reply.model_config)
    return f"Revealed: {named}. Your vote is final." if named else ""


# --- assignment: who gets which scenario (docs/assignment.md) -------------------------------------

EXCLUDED_MESSAGE = "Your work in this study has ended. Thank you for taking part."


@transaction.atomic
def conversation_start(*, study: Study, rater: User) -> Conversation:
    """Resume the rater's active conversation in the study, or hand them a scenario.

    The rules (docs/assignment.md): a scenario goes to exactly `study.overlap` raters, counting its active and
    completed conversations (expired and abandoned ones give their place back); a rater never gets a scenario
    they had before, whatever became of that conversation (an expired one included); a rater has at most one
    active conversation per study (the `conversation_one_active_per_rater` constraint) and at most
    `study.conversations_per_rater` active + completed ones (0: no quota). Refusals are 409s, but for one: while
    the generation queue is longer than `study.max_queued_turns`, a new conversation is refused as busy (503 with
    Retry-After, `_refuse_when_busy`); resuming the active one never is.

    Safe under any concurrency: handing out is serialised per study (the study row is locked), idle
    conversations are expired under that lock before counting, and a start that still meets the one-active
    constraint (a writer that did not take the lock) resumes the conversation that won instead of failing.
    """
    if not study.is_active:
        raise ActionRefused("This study is closed.", status=409)
    if Participant.objects.filter(study=study, user=rater, excluded=True).exists():
        raise ActionRefused(EXCLUDED_MESSAGE, status=409)
    active = _active_resumed(study, rater)
    if active is not None:
        return active
    # Higher layers may refuse new work (labeling: the study's qualification first).
    signals.work_requested.send(sender=Conversation, study=study, rater=rater)
    _refuse_when_busy(study)
    try:
        with transaction.atomic():  # a savepoint: the IntegrityError below leaves the transaction usable
            return _conversation_assign(study, rater)
    except IntegrityError:
        active = _active_resumed(study, rater)
        if active is None:
            raise
        return active


BUSY_RETRY_MIN_SECONDS, BUSY_RETRY_MAX_SECONDS = 5, 120
_THROUGHPUT_WINDOW = timedelta(seconds=60)


def _refuse_when_busy(study: Study) -> None:
    """Refuse a new conversation while more candidate replies wait for a worker (PENDING, all studies: the
    queue is shared) than the study's `max_queued_turns` (0: no bound): a rater then gets "busy, try again in
    N s" at once, instead of a conversation whose replies would take minutes. Nothing is written.

    N is the queue's length divided by the generation throughput of the last minute (replies finished), so
    the time for the queue ahead to drain, clamped to BUSY_RETRY_MIN_SECONDS..BUSY_RETRY_MAX_SECONDS (the
    longest when nothing finished in the last minute). Both counts read small partial indexes of Turn."""
    bound = study.max_queued_turns
    if not bound:
        return
    queued = Turn.objects.filter(status=Turn.Status.PENDING).count()
    if queued <= bound:
        return
    finished = Turn.objects.filter(
        finished_at__gte=timezone.now() - _THROUGHPUT_WINDOW,
        role=Turn.Role.ASSISTANT,
        is_rewrite=False,
        is_attention_check=False,
    ).count()
    per_second = finished / _THROUGHPUT_WINDOW.total_seconds()
    wait = queued / per_second if per_second else BUSY_RETRY_MAX_SECONDS
    seconds = max(BUSY_RETRY_MIN_SECONDS, min(BUSY_RETRY_MAX_SECONDS, math.ceil(wait)))
    raise ActionRefused(
        f"The models are busy with other raters' replies right now: try again in {seconds} s.",
        status=503,
        headers={"Retry-After": str(seconds)},
    )


def _active_resumed(study: Study, rater: User) -> Conversation | None:
    """The rater's active conversation in the study, its activity stamped now (coming back is activity), or
    None. The stamp is a conditional UPDATE, so a conversation expired at this very moment is not resumed."""
    active = Conversation.objects.filter(study=study, rater=rater, status=Conversation.Status.ACTIVE).first()
    if active is None:
        return None
    now = timezone.now()
    touched = Conversation.objects.filter(pk=active.pk, status=Conversation.Status.ACTIVE).update(last_activity_at=now)
    if not touched:
        return None
    active.last_activity_at = now
    return active


def _conversation_assign(study: Study, rater: User) -> Conversation:
    """Hand the rater a scenario, with the study row locked (FOR NO KEY UPDATE: it serialises the study's
    starts and still lets rows that point at the study be written)."""
    locked = Study.objects.select_for_update(no_key=True).get(pk=study.pk)
    if not locked.is_active:
        raise ActionRefused("This study is closed.", status=409)
    # A start of the same rater that held the lock before us may have made one meanwhile.
    active = _active_resumed(locked, rater)
    if active is not None:
        return active
    conversations_expire(study=locked)  # idle conversations give their place back before we count
    quota = locked.conversations_per_rater
    if quota and selectors.conversations_holding_a_place(locked, rater) >= quota:
        raise ActionRefused(
            f"You have done the {quota} conversation{'s' if quota != 1 else ''} this study asks of each rater. "
            "Thank you!",
            status=409,
        )
    scenario = selectors.scenarios_open_to(locked, rater).first()
    if scenario is None:
        raise ActionRefused("There are no scenarios left for you in this study. Thank you!", status=409)
    # Every rater who works gets a Participant (panel ones have theirs already): it is where they are flagged,
    # excluded and paid, raters made by hand included.
    Participant.objects.get_or_create(study=locked, user=rater)
    return Conversation.objects.create(study=locked, scenario=scenario, rater=rater, last_activity_at=timezone.now())


def conversations_expire(now: datetime | None = None, *, study: Study | None = None) -> int:
    """Expire active conversations idle for their study's `assignment_timeout_minutes` (0: never): status
    EXPIRED, `ended_at` now; their scenarios go back to the pool. All studies (the periodic sweep,
    `annotate.tasks.expire_conversations_task`), or one (`conversation_start`, lazily). Returns how many.

    The idle condition is checked again on the locked rows, so a conversation whose message or vote is being
    written right now is never expired. The sweep skips rows another transaction holds (it never waits, so it
    never takes part in a deadlock); a start, holding its study's lock, waits for them, so what it counts next
    is settled.
    """
    now = now or timezone.now()
    expired = 0
    for minutes, study_ids in selectors.studies_by_timeout(study).items():
        cutoff = now - timedelta(minutes=minutes)
        with transaction.atomic():
            idle = Conversation.objects.filter(
                selectors.idle_conversations(cutoff), study_id__in=study_ids, status=Conversation.Status.ACTIVE
            )
            locked = idle.select_for_update(skip_locked=study is None).order_by("pk")
            ids = list(locked.values_list("pk", flat=True))
            if ids:
                expired += Conversation.objects.filter(pk__in=ids, status=Conversation.Status.ACTIVE).update(
                    status=Conversation.Status.EXPIRED, ended_at=now
                )
    return expired


@transaction.atomic
def message_send(*, conversation: Conversation, text: str, client_key: uuid.UUID | None = None) -> Turn:
    """Add the rater's message and K pending candidate replies, sampled once this commits."""
    if client_key is not None:
        existing = Turn.objects.filter(client_key=client_key).first()
        if existing is not None:
            if existing.conversation_id != conversation.pk:
                raise ActionRefused("That request key belongs to another conversation.", status=409)
            return existing  # a resend of a message we already have
    conversation = _locked(conversation)
    study = conversation.study
    text = clean_text(text, limit=study.max_message_chars)
    if selectors.awaiting_vote(conversation) is not None:
        raise ActionRefused("Choose a reply before sending your next message.", status=409)
    if selectors.user_turn_count(conversation) >= study.max_user_turns:
        raise ActionRefused(
            f"This study allows {study.max_user_turns} message(s) per conversation; please end it now.", status=409
        )
    head = conversation.head
    depth = head.depth + 1 if head else 0
    user_turn = Turn.objects.create(
        conversation=conversation, parent=head, role=Turn.Role.USER, depth=depth, text=text, client_key=client_key
    )
    candidates = [
        Turn(
            conversation=conversation,
            parent=user_turn,
            role=Turn.Role.ASSISTANT,
            depth=depth + 1,
            position=position,
            status=Turn.Status.PENDING,
            model_config=config,
            params=config.effective_params(),
            system_prompt=config.system_prompt,
            seed=secrets.randbelow(2**31),
        )
        for position, config in enumerate(_pool(study, study.candidates_per_turn))
    ]
    planted = _attention_slot(study)
    if planted is not None:
        candidates[planted] = _attention_turn(user_turn, position=planted)
    Turn.objects.bulk_create(candidates)
    conversation.head = user_turn
    conversation.last_activity_at = timezone.now()
    conversation.save(update_fields=["head", "last_activity_at"])
    sampled = Turn.objects.filter(parent=user_turn, is_attention_check=False)  # a planted reply is never sampled
    ids = [t.pk for t in sampled.order_by("position")]
    transaction.on_commit(lambda: _enqueue(ids, suggest_for=user_turn.pk))
    return user_turn


# Planted when the rater's message is too short to shuffle: nonsense no model would write.
ATTENTION_FALLBACK = "Purple seven under the banana quickly telescope of is the window."
ATTENTION_MIN_WORDS = 4


def _attention_slot(study: Study) -> int | None:
    """The slot of this message's planted attention check, drawn with probability
    `study.attention_check_rate`; None for none. Needs two candidates or more: the conversation
    always continues from a real reply."""
    k = study.candidates_per_turn
    if study.arena or k < 2 or study.attention_check_rate <= 0 or random.random() >= study.attention_check_rate:
        return None
    return random.randrange(k)


def attention_text(user_text: str) -> str:
    """An obviously broken reply: the rater's own words shuffled (word salad), or a fixed nonsense
    sentence when the message is too short for a shuffle to look broken."""
    words = user_text.split()
    if len(words) >= ATTENTION_MIN_WORDS:
        shuffled = list(words)
        for _ in range(10):
            random.shuffle(shuffled)
            if shuffled != words:
                return " ".join(shuffled)
    return ATTENTION_FALLBACK


def _attention_turn(user_turn: Turn, *, position: int) -> Turn:
    """A planted candidate, finished at once (no worker samples it, no model config is credited)."""
    return Turn(
        conversation=user_turn.conversation,
        parent=user_turn,
        role=Turn.Role.ASSISTANT,
        depth=user_turn.depth + 1,
        position=position,
        text=attention_text(user_turn.text),
        status=Turn.Status.DONE,
        is_attention_check=True,
        finished_at=timezone.now(),
    )


def gold_passed_add(*, study: Study, rater: User) -> None:
    """Count one more gold or attention item passed by the rater (`Participant.gold_passed`, which the
    bonus is paid on); the rater's Participant is made if they have none yet (raters made by hand)."""
    participant, _ = Participant.objects.get_or_create(study=study, user=rater)
    Participant.objects.filter(pk=participant.pk).update(gold_passed=F("gold_passed") + 1)


def _attention_passed(candidates: list[Turn], choice: str, chosen: Turn | None) -> bool | None:
    """Whether a vote avoided the planted candidate among `candidates` (None: none was planted).
    Choosing it fails, and so does a tie (a real reply judged no better than nonsense); "all bad" passes."""
    if not any(c.is_attention_check for c in candidates):
        return None
    if choice == Comparison.Choice.TIE:
        return False
    return chosen is None or not chosen.is_attention_check


@transaction.atomic
def turn_retry(*, conversation: Conversation, turn_id: int) -> Turn:
    """Sample a failed candidate again (same config and parameters, a new seed)."""
    conversation = _locked(conversation)
    awaiting = selectors.awaiting_vote(conversation)
    turn = Turn.objects.filter(pk=turn_id, conversation=conversation, role=Turn.Role.ASSISTANT).first()
    if turn is None:
        raise ActionRefused("No such reply in this conversation.", status=404)
    if awaiting is None or turn.parent_id != awaiting.pk:
        raise ActionRefused("Only a reply to your latest message can be retried.", status=409)
    conversation_touch(conversation.pk)
    if turn.status != Turn.Status.FAILED:
        return turn  # already retried, or never failed: nothing to do
    # A fresh seed: the same one would reproduce an empty or degenerate reply.
    Turn.objects.filter(pk=turn.pk).update(status=Turn.Status.PENDING, error="", text="", seed=secrets.randbelow(2**31))
    transaction.on_commit(lambda: _enqueue([turn.pk]))
    turn.refresh_from_db()
    return turn


def comparison_clean(
    *, candidates: list[Turn], choice: str, chosen_id: int | None, strength: str, reason: str
) -> tuple[Turn | None, str, str]:
    """Check a vote among `candidates` (live or review): the chosen turn, the strength and the reason to store.

    A strength only goes with "one candidate is better" (clear unless said otherwise).
    """
    by_id = {c.pk: c for c in candidates}
    if choice not in Comparison.Choice.values:
        raise ActionRefused(f"Unknown choice {choice!r}.")
    chosen = None
    if choice == Comparison.Choice.CANDIDATE:
        if chosen_id not in by_id:
            raise ActionRefused("Pick one of the replies shown.")
        chosen = by_id[chosen_id]
        strength = strength or Comparison.Strength.CLEAR
        if strength not in Comparison.Strength.values:
            raise ActionRefused(f"Unknown strength {strength!r}.")
    else:
        strength = ""
    reason = clean_note(reason, what="reason")
    return chosen, strength, reason


@transaction.atomic
def comparison_record(
    *,
    conversation: Conversation,
    rater: User,
    parent_id: int,
    choice: str,
    chosen_id: int | None = None,
    strength: str = "",
    reason: str = "",
    rewrite_text: str = "",
    continue_from_id: int | None = None,
    idempotency_key: uuid.UUID,
) -> Comparison:
    """Record the rater's choice among the candidates; the conversation continues from it.

    After "tie" or "both bad" no reply is preferred: the study's `tie_policy` says what it goes on from, the
    reply the rater picks (`continue_from_id`) or the rater's rewrite. Idempotent on `idempotency_key`: a resend
    returns the comparison already stored.
    """
    existing = _live_vote_stored(conversation, idempotency_key)
    if existing is not None:
        return existing
    conversation = _locked(conversation)
    parent = _parent_awaiting(conversation, parent_id)
    candidates = _candidates_all_done(parent)
    # Higher layers may refuse the vote (labeling: a study that wants every reply tagged first).
    # Sent before anything is written, so a refusal leaves nothing behind.
    signals.vote_requested.send(sender=Comparison, conversation=conversation, rater=rater, candidates=candidates)
    chosen, strength, reason = comparison_clean(
        candidates=candidates, choice=choice, chosen_id=chosen_id, strength=strength, reason=reason
    )
    if chosen is None:  # tie or both bad
        continued_from = _tie_continuation(conversation.study, candidates, continue_from_id, rewrite_text)
    else:
        continued_from = _gone_on_from(chosen, candidates)
    if rewrite_text.strip():
        continued_from = _rewrite_create(
            conversation, parent, base=continued_from, text=rewrite_text, position=len(candidates)
        )
    attention_passed = _attention_passed(candidates, choice, chosen)
    comparison = Comparison.objects.create(
        conversation=conversation,
        parent=parent,
        choice=choice,
        chosen=chosen,
        continued_from=continued_from,
        strength=strength,
        reason=reason,
        decision_ms=_decision_ms(candidates),
        attention_passed=attention_passed,
        rater=rater,
        idempotency_key=idempotency_key,
    )
    if attention_passed:
        gold_passed_add(study=conversation.study, rater=rater)
    conversation.head = continued_from
    conversation.last_activity_at = timezone.now()
    conversation.save(update_fields=["head", "last_activity_at"])
    return comparison


def rewrite_limit(study: Study) -> int:
    """The longest rewrite a rater may write: replies run longer than messages."""
    return study.max_message_chars * 4


def _tie_continuation(study: Study, candidates: list[Turn], continue_from_id: int | None, rewrite_text: str) -> Turn:
    """What a conversation goes on from after "tie" or "both bad", as the study's `tie_policy` says: the reply
    the rater picked, or (policy "rewrite") the rater's rewrite of it (of the first reply when none was picked).
    Silently going on from reply A would give it a win nobody voted for. A planted attention check is offered
    like any reply (not offering it would give it away) but never gone on from."""
    picked = next((c for c in candidates if c.pk == continue_from_id), None)
    if continue_from_id is not None and picked is None:
        raise ActionRefused("Pick one of the replies shown to go on from.")
    if study.tie_policy == Study.TiePolicy.REWRITE:
        if not rewrite_text.strip():
            raise ActionRefused(
                "After “tie” or “both bad” this study asks you to write the reply the conversation goes on from."
            )
    elif picked is None and not rewrite_text.strip():
        raise ActionRefused("After “tie” or “both bad”, say which reply the conversation goes on from.")
    return _gone_on_from(picked or candidates[0], candidates)


def _gone_on_from(turn: Turn, candidates: list[Turn]) -> Turn:
    """Never a planted attention check: a rater who chose or picked it goes on from the first real reply."""
    return turn if not turn.is_attention_check else next(c for c in candidates if not c.is_attention_check)


def _live_vote_stored(conversation: Conversation, idempotency_key: uuid.UUID) -> Comparison | None:
    """The live vote already stored under this key (a resend), or None; a key used elsewhere is refused.

    Checked before the lock and the state checks, so a resend is answered even once the conversation moved on.
    """
    existing = Comparison.objects.filter(idempotency_key=idempotency_key).first()
    if existing is not None and (existing.conversation_id != conversation.pk or existing.task != Comparison.Task.LIVE):
        raise ActionRefused("That request key belongs to another conversation.", status=409)
    return existing


def _parent_awaiting(conversation: Conversation, parent_id: int) -> Turn:
    """The user turn the vote is for, which must be the one awaiting a choice (a second vote says so)."""
    parent = selectors.awaiting_vote(conversation)
    if parent is None or parent.pk != parent_id:
        live = Comparison.objects.filter(parent_id=parent_id, conversation=conversation, task=Comparison.Task.LIVE)
        if live.exists():
            raise ActionRefused("You already chose a reply for this message.", status=409)
        raise ActionRefused("Those replies are not waiting for a choice.", status=409)
    return parent


def _candidates_all_done(parent: Turn) -> list[Turn]:
    """The candidates answering `parent`. A live vote compares all of them, so it waits until each has
    finished (a failed one is retried first): unlike a review vote, it never leaves one out."""
    candidates = selectors.candidates_of(parent)
    if any(c.status != Turn.Status.DONE for c in candidates):
        raise ActionRefused("Wait until every reply has finished (or retry the failed one) before choosing.", 409)
    return candidates


def _rewrite_create(conversation: Conversation, parent: Turn, *, base: Turn, text: str, position: int) -> Turn:
    """The rater's rewrite of `base`, stored as one more reply to `parent` (the slot after the candidates)
    and credited to `base`'s model config; the conversation continues from it."""
    return Turn.objects.create(
        conversation=conversation,
        parent=parent,
        role=Turn.Role.ASSISTANT,
        depth=base.depth,
        position=position,
        text=clean_text(text, limit=rewrite_limit(conversation.study), what="rewrite"),
        status=Turn.Status.DONE,
        model_config=base.model_config,
        is_rewrite=True,
        rewrite_of=base,
        finished_at=timezone.now(),
    )


def _decision_ms(candidates: list[Turn]) -> int | None:
    """How long the rater took to choose, from the moment the last candidate finished (None if unknown)."""
    ready_at = max((c.finished_at for c in candidates if c.finished_at), default=None)
    return int((timezone.now() - ready_at).total_seconds() * 1000) if ready_at else None


@transaction.atomic
def conversation_finish(
    *, conversation: Conversation, goal: str, understanding: int | str | None, comment: str = ""
) -> Conversation:
    """End the session with the outcome survey. Finishing twice is harmless."""
    current = (
        Conversation.objects.select_for_update(of=("self",)).select_related("study", "head").get(pk=conversation.pk)
    )
    if current.status == Conversation.Status.COMPLETED:
        return current
    if current.status == Conversation.Status.EXPIRED:
        raise ActionRefused(expired_message(current.study), status=409)
    if current.status != Conversation.Status.ACTIVE:
        raise ActionRefused("This conversation has ended.", status=409)
    if selectors.awaiting_vote(current) is not None:
        raise ActionRefused("Choose a reply to your last message before ending the conversation.", status=409)
    if goal not in Conversation.Goal.values:
        raise ActionRefused("Say whether you reached your goal: yes, partly or no.")
    try:
        score = int(understanding) if understanding is not None else 0
    except ValueError:
        score = 0
    if not 1 <= score <= 5:
        raise ActionRefused("Rate how well the assistant understood you, from 1 to 5.")
    comment = clean_note(comment, what="comment")
    current.status = Conversation.Status.COMPLETED
    current.outcome_goal = goal
    current.outcome_understanding = score
    current.outcome_comment = comment
    current.ended_at = current.last_activity_at = timezone.now()
    current.save()
    return current


# --- quality control: flag, exclude, include again ------------------------------------------


@transaction.atomic
def participant_exclude(participant: Participant, reason: str, requeue: bool = True) -> Participant:
    """Leave a rater's work out of the study's dashboard and exports (unless asked for), and stop their work.

    With `requeue` their conversations and reviews no longer count towards the study's overlaps, so their
    scenarios and the conversations they reviewed are handed out again (`selectors.counted_towards_overlap`,
    and labeling's review claims). Their active conversation ends as abandoned. Excluding again only
    updates the reason and `requeue`.
    """
    reason = clean_note(reason, what="reason")
    if not reason:
        raise ActionRefused("Say why this rater's work is excluded: the reason is kept with the exclusion.")
    locked = Participant.objects.select_for_update().get(pk=participant.pk)
    locked.excluded, locked.exclusion_reason, locked.requeued = True, reason, requeue
    locked.save(update_fields=["excluded", "exclusion_reason", "requeued"])
    Conversation.objects.filter(
        study_id=locked.study_id, rater_id=locked.user_id, status=Conversation.Status.ACTIVE
    ).update(status=Conversation.Status.ABANDONED, ended_at=timezone.now())
    return locked


@transaction.atomic
def participant_include(participant: Participant) -> Participant:
    """Undo an exclusion: the rater's work counts again everywhere (a re-queued scenario that was handed
    out again may then have one rater more than the overlap)."""
    locked = Participant.objects.select_for_update().get(pk=participant.pk)
    locked.excluded, locked.exclusion_reason, locked.requeued = False, "", False
    locked.save(update_fields=["excluded", "exclusion_reason", "requeued"])
    return locked


def participant_flag(participant: Participant, flagged: bool = True) -> Participant:
    """Mark a rater for a closer look (or clear the mark); nothing else changes."""
    Participant.objects.filter(pk=participant.pk).update(flagged=flagged)
    participant.flagged = flagged
    return participant


# --- scenarios -----------------------------------------------------------------------------

SCENARIO_FIELDS = ("external_id", "title", "brief", "hidden_intent", "opening_message")
# A scenario's metadata (the row's other fields) is kept shallow: a value may be a list or an object
# of plain values (text, numbers, true/false, null), nothing deeper.
METADATA_MAX_DEPTH = 2
METADATA_KEY_CHARS = 100


def _scenario_text(number: int, field: str, value: object, *, one_line: bool = False) -> str:
    """A scenario field as stored: text or a number, within the column's length; refused otherwise."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ActionRefused(f"Row {number}: '{field}' must be text or a number, not {_json_type(value)}.")
    if isinstance(value, float) and not math.isfinite(value):
        raise ActionRefused(f"Row {number}: '{field}' is not a finite number.")
    text = check_storable(str(value).strip(), what=f"Row {number}: '{field}'")
    if one_line and ("\n" in text or "\r" in text):
        raise ActionRefused(f"Row {number}: '{field}' must be one line.")
    column = Scenario._meta.get_field(field)
    limit = column.max_length if isinstance(column, models.Field) else None
    if limit is not None and len(text) > limit:
        raise ActionRefused(f"Row {number}: '{field}' is {len(text):,} characters long; the limit is {limit:,}.")
    return text


def _json_type(value: object) -> str:
    names = {bool: "true/false", dict: "an object", list: "a list", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _scenario_metadata(number: int, row: Mapping[str, Any]) -> dict[str, Any]:
    """The row's other fields, kept as the scenario's metadata: shallow, and storable as JSON."""
    metadata = {k: v for k, v in row.items() if k not in SCENARIO_FIELDS and k != "id"}
    for key in metadata:
        if len(key) > METADATA_KEY_CHARS:
            raise ActionRefused(f"Row {number}: the field name {key[:40]!r}… is over {METADATA_KEY_CHARS} characters.")
    check_structure(metadata, what=f"Row {number}", max_depth=METADATA_MAX_DEPTH)
    return metadata


def _scenario_row(number: int, row: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """One import row checked field by field: (external_id, the fields to store)."""
    if not isinstance(row, Mapping):
        raise ActionRefused(f"Row {number} is not an object with named fields.")
    row = {str(k).strip(): v for k, v in row.items() if k is not None}
    external_id = _scenario_text(number, "external_id", row.get("external_id") or row.get("id"), one_line=True)
    brief = _scenario_text(number, "brief", row.get("brief"))
    if not brief:
        raise ActionRefused(f"Row {number}: 'brief' is required.")
    if not external_id:
        raise ActionRefused(f"Row {number}: 'external_id' (or 'id') is required.")
    title = _scenario_text(number, "title", row.get("title"), one_line=True) or " ".join(brief.split())[:80]
    fields = {
        "title": title,
        "brief": brief,
        "hidden_intent": _scenario_text(number, "hidden_intent", row.get("hidden_intent")),
        "opening_message": _scenario_text(number, "opening_message", row.get("opening_message")),
        "metadata": _scenario_metadata(number, row),
    }
    return external_id, fields


def scenarios_import(*, study: Study, rows: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """Create or update scenarios from dict rows (JSONL objects or CSV rows).

    Rows need `brief`; `external_id` (or `id`) makes re-imports update instead of duplicate.
    Extra keys go to `metadata`. Returns (created, updated). Every row and field is checked (type,
    length, storable text, shallow metadata) before anything is written: all rows or none.
    """
    parsed = [_scenario_row(number, row) for number, row in enumerate(rows, start=1)]
    created = updated = 0
    with transaction.atomic():
        for external_id, fields in parsed:
            _, was_created = Scenario.objects.update_or_create(study=study, external_id=external_id, defaults=fields)
            created += was_created
            updated += not was_created
    return created, updated


def scenario_rows_read(*, name: str, data: bytes) -> list[dict[str, object]]:
    """Rows of a scenario file, by its extension (.jsonl/.json or .csv)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ActionRefused("The file is not UTF-8 text.") from None
    if "\x00" in text:
        raise ActionRefused("The file contains a NUL character: it is not a text file.")
    if name.lower().endswith(".csv"):
        try:
            return list(csv.DictReader(io.StringIO(text)))
        except csv.Error as exc:
            raise ActionRefused(f"The CSV file is malformed: {exc}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            row = parse_json(line, what=f"Line {number}")
            if not isinstance(row, dict):
                raise ActionRefused(f"Line {number} is not a JSON object.")
            rows.append(row)
    return rows


# --- demo ----------------------------------------------------------------------------------

DEMO_SCENARIOS = Path(__file__).parent / "demo" / "scenarios.jsonl"
DEMO_ACCOUNTS = {"admin": "commonground-admin", "rater": "commonground-rater"}
DEMO_CONFIGS = [
    {
        "name": "gemma-plain",
        "description": "Gemma 3 270M, plain assistant prompt, warmer sampling",
        "system_prompt": "The following is a conversation between a user and a helpful assistant.",
        "params": {"temperature": 0.9, "top_p": 0.95, "max_new_tokens": 64},
    },
    {
        "name": "gemma-clarify",
        "description": "Gemma 3 270M, told to ask a clarifying question first, cooler sampling",
        "system_prompt": (
            "The following is a conversation between a user and a careful assistant. When a request is "
            "unclear, the assistant first asks one short clarifying question."
        ),
        "params": {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 64},
    },
]


# The demo study as shipped.
DEMO_STUDY_SLUG = "demo"
DEMO_STUDY = {
    "name": "Demo: under-specified requests",
    "instructions": (
        "Play the situation on the left. Reveal what you really want only when the assistant asks. "
        "At each turn, pick the reply that helps the conversation most, not the one that sounds best."
    ),
    "candidates_per_turn": 2,
    "max_user_turns": 6,
    "overlap": 50,
}


@transaction.atomic
def demo_setup(*, reset: bool = False) -> dict[str, str | None]:
    """The demo: two Gemma 3 270M configs, the study with its scenarios, the accounts 'admin' and 'rater'. What
    is missing is created; what exists is left as it is, so an admin's edits (turn limit, instructions, a system
    prompt, a password) survive `make run`, which calls this every start. `reset` puts the configs, the study,
    its shipped scenarios and the passwords back as shipped. Returns each account's password when it was set
    now, None when kept. (`labeling.services.demo_setup` adds the default taxonomy.)"""
    configs = []
    for spec in DEMO_CONFIGS:
        fields = {**spec, "backend": ModelConfig.Backend.TRANSFORMERS, "model_path": "gemma3-270m"}
        if reset:
            config, _ = ModelConfig.objects.update_or_create(name=spec["name"], defaults=fields)
        else:
            config, _ = ModelConfig.objects.get_or_create(name=spec["name"], defaults=fields)
        configs.append(config)
    if reset:
        study, created = Study.objects.update_or_create(slug=DEMO_STUDY_SLUG, defaults=DEMO_STUDY)
    else:
        study, created = Study.objects.get_or_create(slug=DEMO_STUDY_SLUG, defaults=DEMO_STUDY)
    if reset or created:
        study.model_pool.set(configs)
    rows = scenario_rows_read(name=DEMO_SCENARIOS.name, data=DEMO_SCENARIOS.read_bytes())
    if not reset:  # only the scenarios missing (by external id): an edited one stays as edited
        have = set(study.scenarios.values_list("external_id", flat=True))
        rows = [row for row in rows if str(row.get("external_id") or row.get("id")) not in have]
    if rows:
        scenarios_import(study=study, rows=rows)
    passwords: dict[str, str | None] = {}
    users = get_user_model()
    for username, password in DEMO_ACCOUNTS.items():
        user, created = users.objects.get_or_create(username=username)
        passwords[username] = password if created or reset else None
        if created or reset:
            user.is_staff = user.is_superuser = username == "admin"
            user.set_password(password)
            user.save()
    return passwords


# --- recovery: no reply stays stuck (docs/architecture.md, "Reliability") --------------------------

WORKER_LOST = "The worker writing this reply stopped {n} times; retry it, or tell the researcher if it keeps failing."


def turns_recover(now: datetime | None = None) -> dict[str, int]:
    """The recovery sweep (`annotate.tasks.recover_turns_task`, every RECOVER_SWEEP_SECONDS by beat).

    * A reply STREAMING with no row write for TURN_LEASE_SECONDS lost its worker (killed, its node gone, or
      wedged on a dead connection): it goes back to PENDING and its task is sent again, so it is taken up
      within the lease plus one sweep, not after the broker's visibility timeout (15 min on Redis). One whose
      workers were lost TURN_MAX_CRASHES times is FAILED instead (the rater may retry it).
    * A reply PENDING for PENDING_REQUEUE_SECONDS since it was made or last sent (its message lost: a task
      that died before its claim was acknowledged) has its task sent again.

    A duplicate message is harmless: the claim lets one attempt run. Rows another sweep holds are skipped.
    `heartbeat_at` of a pending reply records when its task was last sent. Returns counts, for logs and tests.
    """
    now = now or timezone.now()
    lease = now - timedelta(seconds=settings.TURN_LEASE_SECONDS)
    waited = now - timedelta(seconds=settings.PENDING_REQUEUE_SECONDS)
    replies = Turn.objects.filter(role=Turn.Role.ASSISTANT)
    stale = replies.filter(Q(heartbeat_at__lt=lease) | Q(heartbeat_at__isnull=True), status=Turn.Status.STREAMING)
    forgotten = replies.filter(
        Q(heartbeat_at__lt=waited) | Q(heartbeat_at__isnull=True, created_at__lt=waited), status=Turn.Status.PENDING
    )
    with transaction.atomic():
        lost = list(stale.select_for_update(skip_locked=True).values_list("pk", "attempt"))
        give_up = [pk for pk, attempt in lost if attempt >= settings.TURN_MAX_CRASHES]
        again = [pk for pk, attempt in lost if attempt < settings.TURN_MAX_CRASHES]
        Turn.objects.filter(pk__in=give_up, status=Turn.Status.STREAMING).update(
            status=Turn.Status.FAILED, error=WORKER_LOST.format(n=settings.TURN_MAX_CRASHES), finished_at=now
        )
        Turn.objects.filter(pk__in=again, status=Turn.Status.STREAMING).update(
            status=Turn.Status.PENDING, text="", heartbeat_at=now
        )
        resend = list(forgotten.select_for_update(skip_locked=True).values_list("pk", flat=True))
        Turn.objects.filter(pk__in=resend).update(heartbeat_at=now)
        changed, send = [*give_up, *again], [*again, *resend]

        def after_commit() -> None:
            live.announce(changed)
            _enqueue(send)

        transaction.on_commit(after_commit)
    return {"failed": len(give_up), "requeued": len(again), "resent": len(resend)}
