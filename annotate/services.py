"""Writes for live rating sessions. Views, admin, commands and tasks all come through here.

Every function runs in one transaction and locks the conversation row first, so two requests
for one conversation (a double click, a resend) are serialised and the second sees the first.
"""

from __future__ import annotations

import csv
import io
import json
import random
import secrets
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Count, Q
from django.utils import timezone

from annotate import selectors, signals
from annotate.models import Comparison, Conversation, Scenario, Study, Turn
from core.errors import ActionRefused
from core.tasks import task_send
from core.validation import clean_note, clean_text
from workers.models import ModelConfig

# Sent by name: tag suggestions belong to labeling, a layer above this one.
SAMPLE_TASK = "annotate.tasks.sample_turn_task"
SUGGEST_TASK = "labeling.tasks.suggest_tags_task"


def _locked(conversation: Conversation) -> Conversation:
    locked = (
        Conversation.objects.select_for_update(of=("self",)).select_related("study", "head").get(pk=conversation.pk)
    )
    if locked.status != Conversation.Status.ACTIVE:
        raise ActionRefused("This conversation has ended.", status=409)
    return locked


def _enqueue(turn_ids: Iterable[int], *, suggest_for: int | None = None) -> None:
    for turn_id in turn_ids:
        task_send(SAMPLE_TASK, turn_id)
    if suggest_for is not None:  # after the samples: they are what the rater waits for
        task_send(SUGGEST_TASK, suggest_for)


def _pool(study: Study, k: int) -> list[ModelConfig]:
    """K configs from the study's enabled pool, in random order (distinct where possible)."""
    pool = list(study.model_pool.filter(enabled=True))
    if not pool:
        raise ActionRefused("This study has no enabled model configurations; tell the researcher.", status=409)
    random.shuffle(pool)
    return [pool[i % len(pool)] for i in range(k)]


@transaction.atomic
def conversation_start(*, study: Study, rater: User) -> Conversation:
    """Resume the rater's active conversation in the study, or start one on the least-used scenario."""
    if not study.is_active:
        raise ActionRefused("This study is closed.", status=409)
    active = Conversation.objects.filter(study=study, rater=rater, status=Conversation.Status.ACTIVE).first()
    if active is not None:
        return active
    done_by_rater = Conversation.objects.filter(study=study, rater=rater).values("scenario_id")
    scenario = (
        Scenario.objects.filter(study=study)
        .exclude(pk__in=done_by_rater)
        .annotate(n=Count("conversations", filter=~Q(conversations__status=Conversation.Status.ABANDONED)))
        .filter(n__lt=study.overlap)
        .order_by("n", "pk")
        .first()
    )
    if scenario is None:
        raise ActionRefused("There are no scenarios left for you in this study. Thank you!", status=409)
    return Conversation.objects.create(study=study, scenario=scenario, rater=rater)


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
    Turn.objects.bulk_create(candidates)
    conversation.head = user_turn
    conversation.save(update_fields=["head"])
    ids = [t.pk for t in Turn.objects.filter(parent=user_turn).order_by("position")]
    transaction.on_commit(lambda: _enqueue(ids, suggest_for=user_turn.pk))
    return user_turn


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
    idempotency_key: uuid.UUID,
) -> Comparison:
    """Record the rater's choice among the candidates; the conversation continues from it.

    Idempotent on `idempotency_key`: a resend returns the comparison already stored.
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
    continued_from = chosen or candidates[0]
    if rewrite_text.strip():
        continued_from = _rewrite_create(
            conversation, parent, base=continued_from, text=rewrite_text, position=len(candidates)
        )
    comparison = Comparison.objects.create(
        conversation=conversation,
        parent=parent,
        choice=choice,
        chosen=chosen,
        continued_from=continued_from,
        strength=strength,
        reason=reason,
        decision_ms=_decision_ms(candidates),
        rater=rater,
        idempotency_key=idempotency_key,
    )
    conversation.head = continued_from
    conversation.save(update_fields=["head"])
    return comparison


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
        text=clean_text(text, limit=conversation.study.max_message_chars * 4, what="rewrite"),
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
    current = Conversation.objects.select_for_update(of=("self",)).select_related("head").get(pk=conversation.pk)
    if current.status == Conversation.Status.COMPLETED:
        return current
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
    current.ended_at = timezone.now()
    current.save()
    return current


# --- scenarios -----------------------------------------------------------------------------

SCENARIO_FIELDS = ("external_id", "title", "brief", "hidden_intent", "opening_message")


def scenarios_import(*, study: Study, rows: Iterable[Mapping[str, Any]]) -> tuple[int, int]:
    """Create or update scenarios from dict rows (JSONL objects or CSV rows).

    Rows need `brief`; `external_id` (or `id`) makes re-imports update instead of duplicate.
    Extra keys go to `metadata`. Returns (created, updated). All rows or none are written.
    """
    parsed = []
    for number, row in enumerate(rows, start=1):
        row = {str(k).strip(): v for k, v in row.items() if k is not None}
        external_id = str(row.get("external_id") or row.get("id") or "").strip()
        brief = str(row.get("brief") or "").strip()
        if not brief:
            raise ActionRefused(f"Row {number}: 'brief' is required.")
        if not external_id:
            raise ActionRefused(f"Row {number}: 'external_id' (or 'id') is required.")
        fields = {
            "title": str(row.get("title") or brief[:80]).strip()[:200],
            "brief": brief,
            "hidden_intent": str(row.get("hidden_intent") or "").strip(),
            "opening_message": str(row.get("opening_message") or "").strip(),
            "metadata": {k: v for k, v in row.items() if k not in SCENARIO_FIELDS and k != "id"},
        }
        parsed.append((external_id[:100], fields))
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
    if name.lower().endswith(".csv"):
        try:
            return list(csv.DictReader(io.StringIO(text)))
        except csv.Error as exc:
            raise ActionRefused(f"The CSV file is malformed: {exc}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ActionRefused(f"Line {number} is not valid JSON: {exc.msg}") from None
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


@transaction.atomic
def demo_setup() -> dict[str, str]:
    """Create (or refresh) the demo study, its model pool, scenarios and accounts.

    Returns the account passwords, which are reset to the demo values every time.
    """
    configs = []
    for spec in DEMO_CONFIGS:
        config, _ = ModelConfig.objects.update_or_create(
            name=spec["name"],
            defaults={**spec, "backend": ModelConfig.Backend.TRANSFORMERS, "model_path": "gemma3-270m"},
        )
        configs.append(config)
    study, _ = Study.objects.update_or_create(
        slug="demo",
        defaults={
            "name": "Demo: under-specified requests",
            "instructions": (
                "Play the situation on the left. Reveal what you really want only when the assistant asks. "
                "At each turn, pick the reply that helps the conversation most, not the one that sounds best."
            ),
            "candidates_per_turn": 2,
            "max_user_turns": 6,
            "overlap": 50,
        },
    )
    study.model_pool.set(configs)
    rows = scenario_rows_read(name=DEMO_SCENARIOS.name, data=DEMO_SCENARIOS.read_bytes())
    scenarios_import(study=study, rows=rows)
    users = get_user_model()
    for username, password in DEMO_ACCOUNTS.items():
        user, _ = users.objects.get_or_create(username=username)
        user.is_staff = user.is_superuser = username == "admin"
        user.set_password(password)
        user.save()
    return dict(DEMO_ACCOUNTS)
