from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path

from core.errors import ActionRefused
from labeling import services
from labeling.models import Label, ReviewAssignment, Tag, Taxonomy


class LabelInline(admin.TabularInline):
    model = Label
    extra = 0
    fields = ("order", "name", "title", "kind", "roles", "key", "colour", "takes_span", "links_turn", "polarity")


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
        taxonomy = get_object_or_404(Taxonomy, pk=pk)
        response = HttpResponse(services.taxonomy_to_yaml(taxonomy), content_type="application/yaml")
        response["Content-Disposition"] = f'attachment; filename="{taxonomy.slug}.yaml"'
        return response

    def import_yaml(self, request: HttpRequest) -> HttpResponse:
        form = TaxonomyImportForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            try:
                text = form.cleaned_data["file"].read().decode("utf-8")
                taxonomy = services.taxonomy_from_yaml(text)
            except UnicodeDecodeError:
                form.add_error("file", "The file is not UTF-8 text.")
            except ActionRefused as exc:
                form.add_error("file", exc.message)
            else:
                messages.success(request, f"Imported taxonomy “{taxonomy.name}” ({taxonomy.labels.count()} labels).")
                return redirect("admin:labeling_taxonomy_change", taxonomy.pk)
        context = {**self.admin_site.each_context(request), "form": form, "title": "Import a taxonomy (YAML)"}
        return render(request, "admin/labeling/taxonomy/import.html", context)


@admin.register(Label)
class LabelAdmin(admin.ModelAdmin):
    list_display = ("title", "name", "taxonomy", "kind", "roles", "key")
    list_filter = ("taxonomy", "kind", "roles")


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
