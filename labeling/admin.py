from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path
from django.utils.http import content_disposition_header
from django.utils.text import slugify

from annotate import services as annotate_services
from annotate.admin import ParticipantAdmin
from annotate.models import Participant, Study, Turn
from core.errors import ActionRefused
from core.forms import JSON_FORMFIELDS
from core.validation import read_upload
from labeling import selectors, services
from labeling.dashboard import RaterFigures, rater_figures
from labeling.models import GoldAnswer, GoldItem, Label, ReviewAssignment, Tag, Taxonomy


class LabelInline(admin.TabularInline):
    model = Label
    extra = 0
    fields = ("order", "name", "title", "kind", "roles", "key", "colour", "takes_span", "links_turn", "polarity")
    formfield_overrides = JSON_FORMFIELDS


class TaxonomyImportForm(forms.Form):
    file = forms.FileField(help_text="A taxonomy in YAML (see 'Export YAML' on any taxonomy for the format).")


@admin.register(Taxonomy)
class TaxonomyAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "created_at")
    prepopulated_fields = {"slug": ("name",)}
    inlines = [LabelInline]
    change_list_template = "admin/labeling/taxonomy/change_list.html"
    change_form_template = "admin/labeling/taxonomy/change_form.html"

    def get_urls(self) -> list[URLPattern]:
        custom = [
            path("import-yaml/", self.admin_site.admin_view(self.import_yaml), name="labeling_taxonomy_import"),
            path("<int:pk>/yaml/", self.admin_site.admin_view(self.export_yaml), name="labeling_taxonomy_export"),
        ]
        return custom + super().get_urls()

    def export_yaml(self, request: HttpRequest, pk: int) -> HttpResponse:
        """The taxonomy as a YAML download (`labeling.view_taxonomy`)."""
        taxonomy = get_object_or_404(Taxonomy, pk=pk)
        if not self.has_view_permission(request, taxonomy):
            raise PermissionDenied
        response = HttpResponse(services.taxonomy_to_yaml(taxonomy), content_type="application/yaml")
        # Slugs are checked on the way in, but a header must never carry what one could hold (a newline).
        filename = f"{slugify(taxonomy.slug) or 'taxonomy'}.yaml"
        response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=filename)
        return response

    def import_yaml(self, request: HttpRequest) -> HttpResponse:
        """Create or replace a taxonomy from YAML: needs `labeling.add_taxonomy` and `labeling.change_taxonomy`
        (an import replaces the taxonomy with the same slug). A refused file answers 400 (413 when too large)
        with the form and the reason; nothing is written."""
        if not (self.has_add_permission(request) and self.has_change_permission(request)):
            raise PermissionDenied
        form = TaxonomyImportForm(request.POST or None, request.FILES or None)
        status = 200
        if request.method == "POST" and form.is_valid():
            try:
                text = read_upload(form.cleaned_data["file"]).decode("utf-8")
                taxonomy = services.taxonomy_from_yaml(text)
            except UnicodeDecodeError:
                form.add_error("file", "The file is not UTF-8 text.")
                status = 400
            except ActionRefused as exc:
                form.add_error("file", exc.message)
                status = exc.status
            else:
                messages.success(request, f"Imported taxonomy “{taxonomy.name}” ({taxonomy.labels.count()} labels).")
                return redirect("admin:labeling_taxonomy_change", taxonomy.pk)
        elif request.method == "POST":
            status = 400
        context = {**self.admin_site.each_context(request), "form": form, "title": "Import a taxonomy (YAML)"}
        return render(request, "admin/labeling/taxonomy/import.html", context, status=status)


@admin.register(Label)
class LabelAdmin(admin.ModelAdmin):
    list_display = ("title", "name", "taxonomy", "kind", "roles", "key")
    list_filter = ("taxonomy", "kind", "roles")
    formfield_overrides = JSON_FORMFIELDS


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ("pk", "label", "turn", "rater", "task", "source", "status", "span_start", "span_end", "created_at")
    list_filter = ("task", "source", "status", "label")
    raw_id_fields = ("turn", "linked_turn")


@admin.register(ReviewAssignment)
class ReviewAssignmentAdmin(admin.ModelAdmin):
    list_display = ("pk", "conversation", "rater", "status", "created_at", "done_at")
    list_filter = ("status",)
    raw_id_fields = ("conversation",)


# --- gold items (qualification and attention checks) ----------------------------------------


class GoldLabelInlineFormSet(forms.BaseInlineFormSet):
    """An item's expected labels must be labels of its study's taxonomy that apply to replies."""

    def clean(self) -> None:
        super().clean()
        item = self.instance
        if getattr(item, "study_id", None) is None:
            return
        allowed = {
            label.pk for label in selectors.labels_for(item.study, fresh=True) if label.applies_to(Turn.Role.ASSISTANT)
        }
        for form in self.forms:
            label = form.cleaned_data.get("label") if form.cleaned_data else None
            if label is not None and not form.cleaned_data.get("DELETE") and label.pk not in allowed:
                raise forms.ValidationError(
                    f"“{label.title}” is not a reply label of this study's taxonomy: choose among its labels."
                )


class ExpectedLabelInline(admin.TabularInline):
    model = GoldItem.expected_labels.through
    formset = GoldLabelInlineFormSet
    extra = 1
    verbose_name = "expected label"
    verbose_name_plural = "expected labels (none: the rater should tick none)"

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "label":
            queryset = Label.objects.select_related("taxonomy").order_by("taxonomy__name", "order", "name")
            return TaxonomyLabelField(queryset=queryset)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class TaxonomyLabelField(forms.ModelChoiceField):
    """Labels named with their taxonomy: several taxonomies may have a label of the same title."""

    def label_from_instance(self, obj: Label) -> str:
        return f"{obj.taxonomy.name} · {obj.title} ({obj.name})"


class GoldImportForm(forms.Form):
    study = forms.ModelChoiceField(queryset=Study.objects.order_by("name"))
    file = forms.FileField(
        help_text="YAML (a list of items) or JSONL (one item a line): id, kind (qualification | attention), "
        "context, reply, labels (names), explanation, order. See docs/crowd-studies.md."
    )


@admin.register(GoldItem)
class GoldItemAdmin(admin.ModelAdmin):
    list_display = ("__str__", "study", "kind", "order", "expected", "answers_passed")
    list_filter = ("study", "kind")
    search_fields = ("external_id", "context", "reply")
    fields = ("study", "kind", "external_id", "order", "context", "reply", "explanation")
    inlines = [ExpectedLabelInline]
    change_list_template = "admin/labeling/golditem/change_list.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet[GoldItem]:
        return (
            super()
            .get_queryset(request)
            .select_related("study")
            .prefetch_related("expected_labels")
            .annotate(n_answers=Count("answers"), n_passed=Count("answers", filter=Q(answers__passed=True)))
        )

    @admin.display(description="expected labels")
    def expected(self, item: GoldItem) -> str:
        return ", ".join(label.name for label in item.expected_labels.all()) or "none"

    @admin.display(description="raters passed")
    def answers_passed(self, item: Any) -> str:
        return f"{item.n_passed}/{item.n_answers}"

    def get_urls(self) -> list[URLPattern]:
        custom = [path("import/", self.admin_site.admin_view(self.import_items), name="labeling_golditem_import")]
        return custom + super().get_urls()

    def import_items(self, request: HttpRequest) -> HttpResponse:
        """Create or update a study's gold items from a file: needs `labeling.add_golditem` and
        `labeling.change_golditem`. A refused file answers 400 (413 when too large); nothing is written."""
        if not (self.has_add_permission(request) and self.has_change_permission(request)):
            raise PermissionDenied
        form = GoldImportForm(request.POST or None, request.FILES or None)
        status = 200
        if request.method == "POST" and form.is_valid():
            upload = form.cleaned_data["file"]
            try:
                rows = services.gold_rows_read(name=upload.name or "", data=read_upload(upload))
                created, updated = services.gold_items_import(study=form.cleaned_data["study"], rows=rows)
            except ActionRefused as exc:
                form.add_error("file", exc.message)
                status = exc.status
            else:
                messages.success(request, f"Imported gold items: {created} new, {updated} updated.")
                return redirect("admin:labeling_golditem_changelist")
        elif request.method == "POST":
            status = 400
        context = {**self.admin_site.each_context(request), "form": form, "title": "Import gold items"}
        return render(request, "admin/labeling/golditem/import.html", context, status=status)


@admin.register(GoldAnswer)
class GoldAnswerAdmin(admin.ModelAdmin):
    """Answers are written by the qualification page only; deleting a rater's answers (and clearing their
    screen-out) lets them take the qualification again."""

    list_display = ("pk", "item", "rater", "score", "passed", "created_at")
    list_filter = ("passed", "item__study", "item__kind")
    search_fields = ("rater__username",)
    readonly_fields = ("item", "rater", "labels", "score", "passed", "created_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- participants: quality figures and actions (added to annotate's ParticipantAdmin) ----------

admin.site.unregister(Participant)


@admin.register(Participant)
class ParticipantWithQualityAdmin(ParticipantAdmin):
    """annotate's ParticipantAdmin plus the rater's quality figures (as on the study dashboard) and the
    actions that undo a flag or an exclusion."""

    actions = [*ParticipantAdmin.actions, "unflag", "include_again", "retake_qualification"]

    def get_readonly_fields(self, request: HttpRequest, obj: Participant | None = None) -> list[str]:
        return [*super().get_readonly_fields(request, obj), "quality"]

    @admin.display(description="Quality figures")
    def quality(self, obj: Participant) -> str:
        figures = rater_figures(study=obj.study, rater_id=obj.user_id)
        if figures is None:
            return "No work in this study yet."
        return "; ".join(quality_lines(figures))

    @admin.action(description="Clear the flag of the selected participants", permissions=["change"])
    def unflag(self, request: HttpRequest, queryset: QuerySet[Participant]) -> None:
        for participant in queryset:
            annotate_services.participant_flag(participant, flagged=False)
        self.message_user(request, f"Flag cleared: {queryset.count()}.")

    @admin.action(description="Include the selected participants' work again", permissions=["change"])
    def include_again(self, request: HttpRequest, queryset: QuerySet[Participant]) -> None:
        changed = 0
        for participant in queryset.filter(excluded=True):
            annotate_services.participant_include(participant)
            changed += 1
        self.message_user(request, f"Included again: {changed}.")

    @admin.action(description="Let the selected participants retake the qualification", permissions=["change"])
    def retake_qualification(self, request: HttpRequest, queryset: QuerySet[Participant]) -> None:
        """`services.qualification_reset` for each; those who left for another reason are named and skipped."""
        done, skipped = 0, []
        for participant in queryset:
            try:
                services.qualification_reset(participant)
                done += 1
            except ActionRefused as exc:
                skipped.append(exc.message)
        self.message_user(request, f"May retake the qualification: {done}.")
        if skipped:
            self.message_user(request, "Left as they are: " + " ".join(skipped), level=messages.WARNING)


def quality_lines(figures: RaterFigures) -> list[str]:
    """A rater's quality figures in words (the Participant admin's “Quality figures”)."""

    def share(part: int, whole: int) -> str:
        return f"{100 * part / whole:.0f}% ({part}/{whole})" if whole else "—"

    decision = f"{figures.median_decision_s:.1f} s" if figures.median_decision_s is not None else "—"
    tags = f"{figures.tag_agreement:.2f} over {figures.tag_turns} turns" if figures.tag_agreement is not None else "—"
    return [
        f"gold accuracy {share(figures.gold_passed, figures.gold_total)}",
        f"vote agreement with others {share(figures.votes_agreeing, figures.votes_compared)}",
        f"tag agreement (MASI) {tags}",
        f"median decision time {decision}",
        f"{figures.conversations} conversations, {figures.votes} votes, {figures.tags} tags, {figures.reviews} reviews",
    ]
