"""Taxonomies of grounding acts, other behaviours and feedback signals, the tags raters put on turns, review tasks."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.functional import cached_property


class Taxonomy(models.Model):
    """A set of labels a study's raters tag with. Import/export as YAML (labeling.services)."""

    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=80, unique=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "taxonomies"

    def __str__(self) -> str:
        return self.name


class Label(models.Model):
    class Kind(models.TextChoices):
        # Only grounding acts count in grounding rates (dashboard, `multiturn` export); a behaviour such as an
        # over-response is worth tagging but is no act of grounding.
        GROUNDING = "grounding", "Grounding act"
        BEHAVIOUR = "behaviour", "Non-grounding behaviour (over-response, topic switch…)"
        FEEDBACK = "feedback", "Implicit feedback signal"
        OTHER = "other", "Other"

    class Roles(models.TextChoices):
        USER = "user", "User turns"
        ASSISTANT = "assistant", "Assistant turns"
        BOTH = "both", "Both"

    taxonomy = models.ForeignKey(Taxonomy, on_delete=models.CASCADE, related_name="labels")
    name = models.SlugField(max_length=60, help_text="Stable identifier used in exports.")
    title = models.CharField(max_length=100)
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.GROUNDING)
    definition = models.TextField()
    examples = models.JSONField(default=list, blank=True)
    roles = models.CharField(max_length=10, choices=Roles.choices, default=Roles.BOTH)
    takes_span = models.BooleanField(default=False, help_text="May mark a character span of the turn.")
    links_turn = models.BooleanField(default=False, help_text="May point at an earlier turn it reacts to.")
    polarity = models.SmallIntegerField(default=0, help_text="Feedback signals: -1 negative, +1 positive.")
    key = models.CharField(max_length=1, blank=True, help_text="Keyboard shortcut in the rating page.")
    colour = models.CharField(max_length=7, default="#888888")
    order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["taxonomy", "order", "name"]
        constraints = [models.UniqueConstraint(fields=["taxonomy", "name"], name="label_unique_name")]

    def __str__(self) -> str:
        return self.title

    def applies_to(self, role: str) -> bool:
        return self.roles in (self.Roles.BOTH, role)

    def offered_on(self, role: str, depth: int) -> bool:
        """Whether a turn of this role and depth can take the label: a feedback signal reacts to a reply before
        it, which the first message does not have."""
        return self.applies_to(role) and not (depth == 0 and self.kind == self.Kind.FEEDBACK)

    @cached_property
    def tooltip(self) -> str:
        """What a label button says on hover: the definition, the examples, how to tag a span. Worked out once
        per instance: the cached labels (`selectors.labels_for`) are shown on every tag bar of every answer."""
        lines = [self.definition]
        if self.examples:
            lines.append("e.g. " + " · ".join(str(example) for example in self.examples))
        if self.takes_span:
            lines.append("(select text first to tag just that)")
        return "\n".join(lines)


class ReviewAssignment(models.Model):
    """A rater's task to tag a finished conversation turn by turn (k raters per conversation)."""

    class Status(models.TextChoices):
        OPEN = "open"
        DONE = "done"
        EXPIRED = "expired", "Expired (no activity within the study's assignment timeout)"

    conversation = models.ForeignKey("annotate.Conversation", on_delete=models.CASCADE, related_name="reviews")
    rater = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="reviews")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)
    done_at = models.DateTimeField(null=True, blank=True)
    last_activity_at = models.DateTimeField(
        null=True, blank=True, help_text="Claim, last tag or vote of the reviewer: expiry counts from here."
    )

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "last_activity_at"])]
        constraints = [models.UniqueConstraint(fields=["conversation", "rater"], name="review_once_per_rater")]

    def __str__(self) -> str:
        return f"Review of conversation {self.conversation_id} by {self.rater}"


class Tag(models.Model):
    """A label on a turn (optionally a span of it, optionally linked to an earlier turn)."""

    class Source(models.TextChoices):
        RATER = "rater"
        SUGGESTION = "suggestion"

    class Status(models.TextChoices):
        CONFIRMED = "confirmed", "Confirmed"
        SUGGESTED = "suggested", "Suggested, awaiting the rater"
        REJECTED = "rejected", "Suggestion rejected"

    class Task(models.TextChoices):
        LIVE = "live", "Live session"
        REVIEW = "review", "Review pass"

    turn = models.ForeignKey("annotate.Turn", on_delete=models.CASCADE, related_name="tags")
    label = models.ForeignKey(Label, on_delete=models.PROTECT, related_name="tags")
    rater = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="tags")
    task = models.CharField(max_length=10, choices=Task.choices, default=Task.LIVE)
    span_start = models.PositiveIntegerField(null=True, blank=True)
    span_end = models.PositiveIntegerField(null=True, blank=True)
    linked_turn = models.ForeignKey(
        "annotate.Turn", null=True, blank=True, on_delete=models.CASCADE, related_name="linked_tags"
    )
    source = models.CharField(max_length=12, choices=Source.choices, default=Source.RATER)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.CONFIRMED)
    suggestion_note = models.CharField(max_length=200, blank=True, help_text="Why it was suggested.")
    created_at = models.DateTimeField(auto_now_add=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["turn", "span_start", "id"]
        indexes = [models.Index(fields=["turn", "rater"]), models.Index(fields=["label", "status"])]
        constraints = [
            models.UniqueConstraint(
                fields=["turn", "label", "rater", "task", "span_start", "span_end"],
                name="tag_unique_per_rater",
                nulls_distinct=False,
            ),
            models.CheckConstraint(
                condition=models.Q(span_start__isnull=True, span_end__isnull=True)
                | models.Q(span_start__isnull=False, span_end__isnull=False, span_start__lt=models.F("span_end")),
                name="tag_span_well_formed",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.label} on turn {self.turn_id}"


class GoldItem(models.Model):
    """A reply with known tags: raters tag it before real work (qualification), or meet it as a check.

    A rater's answer is scored against `expected_labels` (see `labeling.services.gold_score`); an item
    whose expected set is empty expects "no label applies".
    """

    class Kind(models.TextChoices):
        QUALIFICATION = "qualification", "Qualification (before real work)"
        ATTENTION = "attention", "Attention check"

    study = models.ForeignKey("annotate.Study", on_delete=models.CASCADE, related_name="gold_items")
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.QUALIFICATION)
    external_id = models.CharField(
        max_length=100, blank=True, help_text="Stable id from the import file: re-imports update the item."
    )
    context = models.TextField(help_text="The user message the reply answers.")
    reply = models.TextField(help_text="The assistant reply the rater tags.")
    expected_labels = models.ManyToManyField(
        Label, blank=True, related_name="gold_items", help_text="The study's labels the reply carries (none: none)."
    )
    explanation = models.TextField(blank=True, help_text="Why these labels: shown to the rater once they finished.")
    order = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["study", "kind", "order", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["study", "external_id"],
                condition=~models.Q(external_id=""),
                name="golditem_unique_external_id",
            )
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} item {self.external_id or self.pk}"


class GoldAnswer(models.Model):
    """A rater's tags on a gold item, scored once: the first answer stands."""

    item = models.ForeignKey(GoldItem, on_delete=models.CASCADE, related_name="answers")
    rater = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="gold_answers")
    labels = models.ManyToManyField(Label, blank=True, related_name="+")
    score = models.FloatField(help_text="Jaccard similarity of the labels given and the labels expected (0–1).")
    passed = models.BooleanField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["item", "created_at"]
        constraints = [models.UniqueConstraint(fields=["item", "rater"], name="goldanswer_once_per_rater")]

    def __str__(self) -> str:
        return f"{self.rater} on {self.item}: {'passed' if self.passed else 'failed'}"


class DashboardSnapshot(models.Model):
    """A study's dashboard figures as computed by `labeling.tasks.dashboard_refresh_task`, one row per (study,
    whether excluded raters count). The page renders from `data` (`labeling.dashboard.dashboard_from_json`), so
    its cost does not grow with the study; `refresh_requested_at` dedupes refresh requests (a conditional UPDATE)."""

    study = models.ForeignKey("annotate.Study", on_delete=models.CASCADE, related_name="dashboard_snapshots")
    include_excluded = models.BooleanField(default=False)
    computed_at = models.DateTimeField(null=True, blank=True, help_text="When the reads of the figures began.")
    refresh_requested_at = models.DateTimeField(null=True, blank=True)
    data = models.JSONField(null=True, blank=True, help_text="The figures (None: requested, not computed yet).")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["study", "include_excluded"], name="dashboardsnapshot_once_per_study")
        ]

    def __str__(self) -> str:
        return f"Dashboard of study {self.study_id}{' (excluded raters included)' if self.include_excluded else ''}"
