"""Studies, scenarios, conversations as trees of turns, and the rater's comparisons."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q

from annotate.tree import slot_letter

# A BCP 47 language tag as datasets and the Hub take it: a 2–3 letter language, then subtags (pt-BR, zh-Hant).
LANGUAGE_TAG = RegexValidator(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$", "A BCP 47 language tag, such as en, de or pt-BR.")


class Study(models.Model):
    """What a rater is asked to do, with which models, and how the data is collected."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    instructions = models.TextField(blank=True)
    model_pool = models.ManyToManyField("workers.ModelConfig", related_name="studies")
    candidates_per_turn = models.PositiveSmallIntegerField(default=2, help_text="K candidates per turn.")
    max_user_turns = models.PositiveSmallIntegerField(default=10, help_text="Turn limit per conversation.")
    max_message_chars = models.PositiveIntegerField(default=2000)
    taxonomy = models.ForeignKey(
        "labeling.Taxonomy",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="studies",
        help_text="Labels raters tag with; empty means the default taxonomy.",
    )
    tags_required_before_vote = models.BooleanField(
        default=False, help_text="Each candidate needs at least one tag from the rater before the vote."
    )
    review_overlap = models.PositiveSmallIntegerField(default=2, help_text="Review pass: raters per conversation.")
    review_all_branches = models.BooleanField(
        default=False, help_text="Review pass: tag every branch, not only the lived path."
    )
    # Blind by default: names and earlier choices a rater or reviewer sees bias what they judge next.
    show_model_names = models.BooleanField(
        default=False, help_text="Raters see which model wrote each reply. Off (the default): replies are anonymous."
    )
    reviewers_see_choice = models.BooleanField(
        default=False, help_text="Review pass: reviewers see which reply the original rater chose. Off: they do not."
    )

    class TiePolicy(models.TextChoices):
        PICK = "pick", "The rater picks the reply the conversation goes on from"
        REWRITE = "rewrite", "The rater writes the reply the conversation goes on from"

    tie_policy = models.CharField(
        max_length=10,
        choices=TiePolicy.choices,
        default=TiePolicy.PICK,
        help_text="After “tie” or “both bad”: what the conversation goes on from.",
    )
    overlap = models.PositiveSmallIntegerField(default=1, help_text="Raters per scenario.")
    arena = models.BooleanField(
        default=False,
        help_text="Arena: each message gets one reply from each of two models of the pool (pairs balanced across "
        "raters, random sides); names a model writes about itself are masked; the models are named to the rater "
        "once they vote, and the vote is then final. Needs two or more enabled models; K is 2.",
    )
    language = models.CharField(
        max_length=35,
        default="en",
        validators=[LANGUAGE_TAG],
        help_text="BCP 47 tag of the language raters write in (e.g. en, de, pt-BR): declared in each dataset row and "
        "in the dataset card. Declared by the researcher, not detected.",
    )
    is_active = models.BooleanField(default=True)
    # --- assignment -------------------------------------------------------------------------
    conversations_per_rater = models.PositiveSmallIntegerField(
        default=0, help_text="Quota: conversations one rater may do in this study (0 = as many as there are)."
    )
    assignment_timeout_minutes = models.PositiveIntegerField(
        default=60,
        help_text="An active conversation with no activity for this long expires and its scenario returns to the pool.",
    )
    max_queued_turns = models.PositiveIntegerField(
        default=0,
        help_text="Busy bound: when more than this many candidate replies wait for a worker (pending, counted over "
        "all studies: the generation queue is shared), new conversations are refused with “busy, try again in N "
        "s” (503); active conversations go on. 0 = no bound.",
    )
    # --- crowd panel entry and exit (Prolific or any panel that passes ids in the link) ---------
    panel_participant_param = models.CharField(
        max_length=40, default="PROLIFIC_PID", help_text="Query parameter of the study link holding the participant id."
    )
    panel_study_param = models.CharField(max_length=40, default="STUDY_ID", help_text="… the panel's study id.")
    panel_session_param = models.CharField(max_length=40, default="SESSION_ID", help_text="… the panel's session id.")
    completion_url = models.CharField(
        max_length=500,
        blank=True,
        help_text="Where a participant goes when done; {code} is replaced by the code, "
        "e.g. https://app.prolific.com/submissions/complete?cc={code}",
    )
    completion_code = models.CharField(max_length=64, blank=True, help_text="Code for participants who finished.")
    screenout_code = models.CharField(max_length=64, blank=True, help_text="Code for participants screened out.")
    returned_code = models.CharField(max_length=64, blank=True, help_text="Code for participants who gave up.")
    consent_text = models.TextField(blank=True, help_text="Shown before any work; the participant must agree.")
    # --- quality control and pay ---------------------------------------------------------------
    qualification_pass_mark = models.FloatField(
        default=0.8, help_text="Share of qualification gold items a rater must get right before real work."
    )
    attention_check_rate = models.FloatField(
        default=0.0, help_text="Chance that a message's candidates include an obviously broken one (0 = never)."
    )
    bonus_per_gold_passed = models.DecimalField(
        max_digits=8, decimal_places=2, default=0, help_text="Bonus per gold or attention item passed."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name_plural = "studies"
        # Checked by labeling's dashboard page (superusers have every permission).
        permissions = [("view_study_dashboard", "Can view the study dashboard")]

    def __str__(self) -> str:
        return self.name


class Scenario(models.Model):
    """What the rater plays: a visible brief and a hidden intent the model must discover."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="scenarios")
    external_id = models.CharField(max_length=100, help_text="Stable id from the import file.")
    title = models.CharField(max_length=200)
    brief = models.TextField(help_text="Shown to the rater.")
    hidden_intent = models.TextField(
        blank=True, help_text="Shown to the rater only: what they really want, revealed only when asked."
    )
    opening_message = models.TextField(blank=True, help_text="Suggested first message.")
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "external_id"]
        constraints = [models.UniqueConstraint(fields=["study", "external_id"], name="scenario_unique_external_id")]

    def __str__(self) -> str:
        return self.title


class Conversation(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active"
        COMPLETED = "completed"
        ABANDONED = "abandoned"
        EXPIRED = "expired", "Expired (no activity within the study's assignment timeout)"

    class Goal(models.TextChoices):
        YES = "yes"
        PARTLY = "partly"
        NO = "no"

    # Stable across databases (a dataset merged from two deployments, a restored backup): exports name
    # conversations and turns by it; the integer id is this database's only.
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    study = models.ForeignKey(Study, on_delete=models.PROTECT, related_name="conversations")
    scenario = models.ForeignKey(Scenario, on_delete=models.PROTECT, related_name="conversations")
    rater = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="conversations")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    # The tip of the lived path: the last user turn, or the continuation chosen after it.
    head = models.ForeignKey("Turn", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    outcome_goal = models.CharField(max_length=10, choices=Goal.choices, blank=True)
    outcome_understanding = models.PositiveSmallIntegerField(null=True, blank=True)
    outcome_comment = models.TextField(blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    last_activity_at = models.DateTimeField(
        null=True, blank=True, help_text="Last message, vote or tag of the rater: expiry counts from here."
    )

    class Meta:
        ordering = ["-started_at"]
        indexes = [models.Index(fields=["rater", "status"]), models.Index(fields=["status", "last_activity_at"])]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "rater"], condition=Q(status="active"), name="conversation_one_active_per_rater"
            )
        ]

    def __str__(self) -> str:
        return f"Conversation {self.pk} ({self.scenario})"


class Turn(models.Model):
    """A node of the conversation tree. The chain of chosen turns is the conversation as lived."""

    class Role(models.TextChoices):
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        PENDING = "pending"
        STREAMING = "streaming"
        DONE = "done"
        FAILED = "failed"

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="turns")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="children")
    role = models.CharField(max_length=10, choices=Role.choices)
    depth = models.PositiveSmallIntegerField(help_text="Position on the path, from 0.")
    position = models.PositiveSmallIntegerField(default=0, help_text="Candidate slot (0 = A) among siblings.")
    text = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DONE)
    error = models.TextField(blank=True)
    model_config = models.ForeignKey(
        "workers.ModelConfig", null=True, blank=True, on_delete=models.PROTECT, related_name="turns"
    )
    params = models.JSONField(default=dict, blank=True, help_text="Generation parameters as used.")
    system_prompt = models.TextField(blank=True, help_text="System prompt as used.")
    seed = models.BigIntegerField(null=True, blank=True)
    is_rewrite = models.BooleanField(default=False)
    rewrite_of = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="rewrites")
    is_attention_check = models.BooleanField(
        default=False,
        help_text="A planted, obviously broken candidate (never sampled): the rater passes by not choosing it. "
        "Left out of exports and of the dashboard's model figures; the conversation never continues from it.",
    )
    client_key = models.UUIDField(null=True, blank=True, unique=True, help_text="Idempotency key of a user POST.")
    attempt = models.PositiveSmallIntegerField(default=0, help_text="How many times a worker claimed it.")
    claimed_by = models.CharField(max_length=200, blank=True)
    # The reply named its own model or vendor (`ModelConfig.identity_names`): masked on display, and its battle
    # is left out of the leaderboard by default (a rater who knows the model is no longer blind).
    identity_leak = models.BooleanField(default=False)
    # What the rater is told while the reply has no text yet (the model is loading), cleared at the first token.
    note = models.CharField(max_length=200, blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    first_token_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last token written by the worker.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["depth", "position", "id"]
        indexes = [
            models.Index(fields=["conversation", "depth"]),
            # Small (only the queue): counting the generation queue (a study's busy bound) and finding replies
            # waiting too long (the recovery sweep) never scan the whole table.
            models.Index(fields=["created_at"], condition=Q(status="pending"), name="turn_pending_created"),
            # Replies finished in the last minute: the throughput a busy refusal's Retry-After is estimated from.
            models.Index(fields=["finished_at"], condition=Q(finished_at__isnull=False), name="turn_finished_at"),
        ]

    # What raters are shown for a failed reply. `error` is for staff (admin's Turn pages): it may name the
    # model server and quote its reply.
    RATER_ERROR = "This reply could not be generated. Retry it, or tell the researcher if it keeps failing."

    def __str__(self) -> str:
        return f"{self.role} turn {self.pk}"

    @property
    def rater_error(self) -> str:
        """The generic message raters see when this reply failed, else ""."""
        return self.RATER_ERROR if self.status == self.Status.FAILED else ""

    @property
    def label(self) -> str:
        return slot_letter(self.position)

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.DONE, self.Status.FAILED}


class Comparison(models.Model):
    """A rater's judgement of the candidates answering one user turn."""

    class Choice(models.TextChoices):
        CANDIDATE = "candidate", "One candidate is better"
        TIE = "tie", "Tie"
        ALL_BAD = "all_bad", "All bad"

    class Strength(models.TextChoices):
        SLIGHT = "slight"
        CLEAR = "clear"

    class Task(models.TextChoices):
        LIVE = "live", "Live session"
        REVIEW = "review", "Review pass"

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="comparisons")
    # One live vote per user turn (it steers the conversation), plus one per reviewer: the overlap
    # that vote agreement is computed on.
    parent = models.ForeignKey(Turn, on_delete=models.CASCADE, related_name="comparisons")
    task = models.CharField(max_length=10, choices=Task.choices, default=Task.LIVE)
    choice = models.CharField(max_length=10, choices=Choice.choices)
    chosen = models.ForeignKey(Turn, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    continued_from = models.ForeignKey(
        Turn,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="+",
        help_text="The turn that joined the lived path (live votes only: a review vote continues nothing).",
    )
    strength = models.CharField(max_length=10, choices=Strength.choices, blank=True)
    reason = models.TextField(blank=True)
    decision_ms = models.PositiveIntegerField(null=True, blank=True)
    attention_passed = models.BooleanField(
        null=True,
        blank=True,
        help_text="Live votes among candidates with a planted attention check: whether the rater avoided it "
        "(choosing it or a tie fails); empty when there was none.",
    )
    rater = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="comparisons")
    idempotency_key = models.UUIDField(default=uuid.uuid4, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(choice="candidate", chosen__isnull=False) | ~Q(choice="candidate"),
                name="comparison_candidate_needs_chosen",
            ),
            models.UniqueConstraint(fields=["parent", "rater"], name="comparison_once_per_rater"),
            models.UniqueConstraint(fields=["parent"], condition=Q(task="live"), name="comparison_one_live_per_turn"),
        ]

    def __str__(self) -> str:
        return f"Comparison {self.pk} ({self.choice})"


class ArenaPair(models.Model):
    """How many messages of an arena study each unordered pair of models has answered: the next message goes
    to a pair with the fewest (`services.arena_pair`), so every pair gets battles whatever the raters do."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="arena_pairs")
    first = models.ForeignKey("workers.ModelConfig", on_delete=models.CASCADE, related_name="+")
    second = models.ForeignKey("workers.ModelConfig", on_delete=models.CASCADE, related_name="+")
    battles = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["study", "first", "second"], name="arena_pair_unique")]

    def __str__(self) -> str:
        return f"{self.first_id}–{self.second_id}: {self.battles}"


class Participant(models.Model):
    """A rater's place in one study: how they came in (panel ids), consent, qualification, status,
    pay, and whether their work counts. Raters made by hand get one too, on their first start."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        COMPLETED = "completed"
        SCREENED_OUT = "screened_out", "Screened out"
        RETURNED = "returned"

    class Review(models.TextChoices):
        PENDING = "pending"
        APPROVED = "approved"
        REJECTED = "rejected"

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="participants")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="participations")
    # NULL, not "", for raters made by hand: the unique constraint below skips them.
    external_id = models.CharField(  # noqa: DJ001
        max_length=100, null=True, blank=True, help_text="The panel's participant id (e.g. PROLIFIC_PID)."
    )
    panel_study_id = models.CharField(max_length=100, blank=True)
    panel_session_id = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.ACTIVE)
    review = models.CharField(max_length=10, choices=Review.choices, default=Review.PENDING)
    consented_at = models.DateTimeField(null=True, blank=True)
    qualified_at = models.DateTimeField(null=True, blank=True)
    qualification_score = models.FloatField(null=True, blank=True)
    flagged = models.BooleanField(default=False, help_text="Marked for a closer look.")
    excluded = models.BooleanField(
        default=False, help_text="Their work is left out of dashboards and exports (unless asked for)."
    )
    exclusion_reason = models.TextField(blank=True)
    requeued = models.BooleanField(
        default=False,
        help_text="Excluded with their work handed out again: their conversations and reviews no longer count "
        "towards the study's overlaps.",
    )
    screenout_reason = models.CharField(
        max_length=200, blank=True, help_text="Why they were screened out (e.g. failed qualification, no places left)."
    )
    gold_passed = models.PositiveIntegerField(
        default=0, help_text="Gold and attention items passed, counted by quality control: the bonus is paid on it."
    )
    bonus = models.DecimalField(
        max_digits=8,
        decimal_places=2,
        default=0,
        help_text="Bonus to pay: the study's bonus per gold item × gold items passed; 0 unless completed and not "
        "rejected. Updated on completion, on approve/reject and when the pay sheet is downloaded.",
    )
    started_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["study", "started_at"]
        constraints = [
            models.UniqueConstraint(fields=["study", "user"], name="participant_once_per_study"),
            models.UniqueConstraint(
                fields=["study", "external_id"],
                condition=Q(external_id__isnull=False),
                name="participant_external_id_once_per_study",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.external_id or self.user} in {self.study}"
