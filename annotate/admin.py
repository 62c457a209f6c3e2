from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html

from annotate import panel, selectors, services
from annotate.models import Comparison, Conversation, Participant, Scenario, Study, Turn
from core.errors import ActionRefused
from core.forms import JSON_FORMFIELDS
from core.validation import read_upload


class ScenarioImportForm(forms.Form):
    file = forms.FileField(help_text="JSONL (one object per line) or CSV with a header row.")


class ScenarioProgress:
    """Per scenario, how far assignment got (`selectors.scenario_progress`, counted in the page's one query):
    raters holding a place against the study's overlap, then active, done and expired conversations."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[Scenario]:
        return selectors.scenario_progress(super().get_queryset(request).select_related("study"))  # type: ignore[misc]

    @admin.display(description="Assigned / overlap", ordering="n_assigned")
    def assigned(self, obj: Scenario) -> str:
        return f"{getattr(obj, 'n_assigned', 0)} / {obj.study.overlap}"

    @admin.display(description="Active", ordering="n_active")
    def active(self, obj: Scenario) -> int:
        return int(getattr(obj, "n_active", 0))

    @admin.display(description="Done", ordering="n_completed")
    def done(self, obj: Scenario) -> int:
        return int(getattr(obj, "n_completed", 0))

    @admin.display(description="Expired", ordering="n_expired")
    def expired(self, obj: Scenario) -> int:
        return int(getattr(obj, "n_expired", 0))


PROGRESS_FIELDS = ("assigned", "active", "done", "expired")


class ScenarioInlineForm(forms.ModelForm):
    """Small boxes: with Django's defaults (40-column, 10-row text areas) the study page was 2,500 px wide at
    six scenarios. A scenario's own change page (the row's link) has the full-size fields."""

    class Meta:
        model = Scenario
        fields = ("external_id", "title", "brief", "hidden_intent")
        widgets = {
            "external_id": forms.TextInput(attrs={"size": 8}),
            "title": forms.TextInput(attrs={"size": 16}),
            "brief": forms.Textarea(attrs={"rows": 3, "cols": 28}),
            "hidden_intent": forms.Textarea(attrs={"rows": 3, "cols": 28}),
        }


class ScenarioInline(ScenarioProgress, admin.TabularInline):
    model = Scenario
    form = ScenarioInlineForm
    extra = 0
    fields = ("external_id", "title", "brief", "hidden_intent", "progress")
    readonly_fields = ("progress",)
    show_change_link = True
    formfield_overrides = JSON_FORMFIELDS

    @admin.display(description="Assignment")
    def progress(self, obj: Scenario) -> str:
        """The four progress columns in one: four narrow columns made the rows too wide for a laptop screen."""
        if obj.pk is None:
            return "—"
        return format_html(
            "{} assigned<br>{} active · {} done<br>{} expired",
            self.assigned(obj), self.active(obj), self.done(obj), self.expired(obj),
        )  # fmt: skip


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "candidates_per_turn", "max_user_turns", "overlap", "is_active")
    prepopulated_fields = {"slug": ("name",)}
    filter_horizontal = ("model_pool",)
    inlines = [ScenarioInline]
    change_form_template = "admin/annotate/study/change_form.html"

    def get_urls(self) -> list[URLPattern]:
        custom = [
            path(
                "<int:pk>/import-scenarios/",
                self.admin_site.admin_view(self.import_scenarios),
                name="annotate_study_import_scenarios",
            )
        ]
        return custom + super().get_urls()

    def import_scenarios(self, request: HttpRequest, pk: int) -> HttpResponse:
        """Import a scenario file into the study: changing a study's scenarios needs `annotate.change_study`.
        A refused file answers 400 (413 when too large) with the form and the reason; nothing is written."""
        study = get_object_or_404(Study, pk=pk)
        if not self.has_change_permission(request, study):
            raise PermissionDenied
        form = ScenarioImportForm(request.POST or None, request.FILES or None)
        status = 200
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                data = read_upload(upload)
                rows = services.scenario_rows_read(name=upload.name or "", data=data)
                created, updated = services.scenarios_import(study=study, rows=rows)
            except ActionRefused as exc:
                form.add_error("file", exc.message)
                status = exc.status
            else:
                messages.success(request, f"Imported scenarios: {created} new, {updated} updated.")
                return redirect("admin:annotate_study_change", pk)
        elif request.method == "POST":
            status = 400
        context = {**self.admin_site.each_context(request), "form": form, "study": study, "title": "Import scenarios"}
        return render(request, "admin/annotate/study/import_scenarios.html", context, status=status)


@admin.register(Scenario)
class ScenarioAdmin(ScenarioProgress, admin.ModelAdmin):
    list_display = ("title", "study", "external_id", *PROGRESS_FIELDS)
    readonly_fields = PROGRESS_FIELDS
    list_filter = ("study",)
    search_fields = ("title", "brief", "hidden_intent", "external_id")
    formfield_overrides = JSON_FORMFIELDS


class TurnInline(admin.TabularInline):
    model = Turn
    extra = 0
    fields = ("depth", "role", "position", "status", "model_config", "text", "attempt")
    readonly_fields = fields
    can_delete = False
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("pk", "study", "scenario", "rater", "status", "outcome_goal", "outcome_understanding", "started_at")
    list_filter = ("study", "status", "outcome_goal")
    search_fields = ("scenario__title", "rater__username")
    raw_id_fields = ("head",)
    inlines = [TurnInline]


@admin.register(Turn)
class TurnAdmin(admin.ModelAdmin):
    list_display = ("pk", "conversation", "role", "depth", "position", "status", "model_config", "attempt")
    list_filter = ("role", "status", "model_config", "is_attention_check")
    raw_id_fields = ("conversation", "parent", "rewrite_of")
    search_fields = ("text",)
    formfield_overrides = JSON_FORMFIELDS


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ("pk", "conversation", "task", "choice", "chosen", "strength", "rater", "decision_ms", "created_at")
    list_filter = ("task", "choice", "strength", "attention_passed")
    raw_id_fields = ("conversation", "parent", "chosen", "continued_from")


class ExcludeForm(forms.Form):
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), help_text="Kept with the exclusion.")
    requeue = forms.BooleanField(
        required=False, initial=True, help_text="Hand their scenarios and reviews out again to other raters."
    )


@admin.register(Participant)
class ParticipantAdmin(admin.ModelAdmin):
    """Panel participants (and raters made by hand) per study: status, review, pay. They come in through the
    study link (annotate.panel), so none are added here; status and exclusion change through the actions."""

    list_display = (
        "external_id",
        "study",
        "status",
        "review",
        "gold_passed",
        "bonus",
        "flagged",
        "excluded",
        "completed_at",
    )
    list_filter = ("study", "status", "review", "excluded", "flagged")
    search_fields = ("external_id", "panel_session_id", "user__username")
    list_select_related = ("study", "user")
    actions = ["approve", "reject", "flag", "exclude_work", "download_pay_sheet"]
    # Everything else is recorded by the participant's steps, quality control or the actions.
    editable_fields = ("flagged", "gold_passed")

    def get_readonly_fields(self, request: HttpRequest, obj: Participant | None = None) -> list[str]:
        fields = [f.name for f in Participant._meta.fields if f.name not in self.editable_fields]
        return [*fields, "time_on_task"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="Time on task")
    def time_on_task(self, obj: Participant) -> str:
        minutes = panel.time_on_task([obj])[obj.pk].total_seconds() / 60
        return f"{minutes:.1f} min (conversations and qualification; see docs/crowd-studies.md)"

    def save_model(self, request: HttpRequest, obj: Participant, form: forms.Form, change: bool) -> None:
        obj.bonus = panel.participant_bonus(obj)  # gold_passed may have been corrected
        super().save_model(request, obj, form, change)

    def _reviewed(self, request: HttpRequest, queryset: QuerySet[Participant], review: str) -> None:
        changed = panel.participants_review(queryset, review)
        skipped = queryset.count() - changed
        note = f"; {skipped} left as they are (only completed participants are reviewed)" if skipped else ""
        self.message_user(request, f"{review.capitalize()}: {changed}{note}.")

    @admin.action(description="Approve the work of the selected participants", permissions=["change"])
    def approve(self, request: HttpRequest, queryset: QuerySet[Participant]) -> None:
        self._reviewed(request, queryset, Participant.Review.APPROVED)

    @admin.action(description="Reject the work of the selected participants", permissions=["change"])
    def reject(self, request: HttpRequest, queryset: QuerySet[Participant]) -> None:
        self._reviewed(request, queryset, Participant.Review.REJECTED)

    @admin.action(description="Flag the selected participants for a closer look", permissions=["change"])
    def flag(self, request: HttpRequest, queryset: QuerySet[Participant]) -> None:
        for participant in queryset:
            services.participant_flag(participant)
        self.message_user(request, f"Flagged: {queryset.count()}.")

    @admin.action(description="Exclude the selected participants' work…", permissions=["change"])
    def exclude_work(self, request: HttpRequest, queryset: QuerySet[Participant]) -> HttpResponse | None:
        """Asks for the reason (and whether to hand their work out again) first; `services.participant_exclude`."""
        form = ExcludeForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            try:
                for participant in queryset:
                    services.participant_exclude(
                        participant, form.cleaned_data["reason"], requeue=form.cleaned_data["requeue"]
                    )
            except ActionRefused as exc:
                self.message_user(request, exc.message, level=messages.ERROR)
                return None
            self.message_user(request, f"Excluded: {queryset.count()}.")
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Exclude participants",
            "form": form,
            "participants": queryset,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
            "opts": self.model._meta,
        }
        return render(request, "admin/annotate/participant/exclude.html", context)

    @admin.action(description="Download pay sheet (CSV)", permissions=["view"])
    def download_pay_sheet(self, request: HttpRequest, queryset: QuerySet[Participant]) -> HttpResponse:
        """The panel's pay sheet of the selected participants (`panel.pay_sheet`): one row per panel id."""
        slugs = sorted(set(queryset.values_list("study__slug", flat=True)))
        name = slugs[0] if len(slugs) == 1 else "participants"
        response = HttpResponse(panel.pay_sheet(queryset), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="pay-sheet-{name}-{timezone.now():%Y%m%d-%H%M}.csv"'
        return response
