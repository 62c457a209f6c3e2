from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path

from annotate import services
from annotate.models import Comparison, Conversation, Scenario, Study, Turn
from core.errors import ActionRefused


class ScenarioImportForm(forms.Form):
    file = forms.FileField(help_text="JSONL (one object per line) or CSV with a header row.")


class ScenarioInline(admin.TabularInline):
    model = Scenario
    extra = 0
    fields = ("external_id", "title", "brief", "hidden_intent")
    show_change_link = True


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
        study = get_object_or_404(Study, pk=pk)
        form = ScenarioImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                rows = services.scenario_rows_read(name=upload.name, data=upload.read())
                created, updated = services.scenarios_import(study=study, rows=rows)
            except ActionRefused as exc:
                form.add_error("file", exc.message)
            else:
                messages.success(request, f"Imported scenarios: {created} new, {updated} updated.")
                return redirect("admin:annotate_study_change", pk)
        context = {**self.admin_site.each_context(request), "form": form, "study": study, "title": "Import scenarios"}
        return render(request, "admin/annotate/study/import_scenarios.html", context)


@admin.register(Scenario)
class ScenarioAdmin(admin.ModelAdmin):
    list_display = ("title", "study", "external_id")
    list_filter = ("study",)
    search_fields = ("title", "brief", "hidden_intent", "external_id")


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
    list_filter = ("role", "status", "model_config")
    raw_id_fields = ("conversation", "parent", "rewrite_of")
    search_fields = ("text",)


@admin.register(Comparison)
class ComparisonAdmin(admin.ModelAdmin):
    list_display = ("pk", "conversation", "task", "choice", "chosen", "strength", "rater", "decision_ms", "created_at")
    list_filter = ("task", "choice", "strength")
    raw_id_fields = ("conversation", "parent", "chosen", "continued_from")
