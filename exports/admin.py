"""Admin for dataset exports: the export form, an export's progress page and its downloads, and
the "Export dataset…" action and button on studies (added to annotate's StudyAdmin from here, so
annotate never names exports)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import URLPattern, path, reverse
from django.utils.http import content_disposition_header

from annotate.admin import StudyAdmin
from annotate.models import Study
from core.errors import ActionRefused
from exports import services
from exports.models import DatasetExport
from exports.selection import AGGREGATES, ARENA_HISTORIES, FILE_FORMATS, FORMATS, SEGMENT_KINDS, ExportParams
from workers.models import ModelConfig


class ExportForm(forms.Form):
    """The export parameters a researcher picks in admin (the same as `manage.py export_dataset`)."""

    study = forms.ModelChoiceField(queryset=Study.objects.order_by("name"))
    format = forms.ChoiceField(choices=[(f, f) for f in FORMATS], help_text="Schemas: docs/exports.md")
    file_format = forms.ChoiceField(choices=[(f, f) for f in FILE_FORMATS], initial="jsonl")
    gzip = forms.BooleanField(required=False, help_text="Compress JSONL (.jsonl.gz)")
    since = forms.DateField(required=False, help_text="Conversations started on or after (YYYY-MM-DD, UTC)")
    until = forms.DateField(required=False, help_text="… and on or before")
    raters = forms.CharField(required=False, help_text="Usernames whose judgements to keep, comma separated")
    models = forms.ModelMultipleChoiceField(
        queryset=ModelConfig.objects.order_by("name"), required=False, help_text="Keep rows involving only these"
    )
    min_agreement = forms.FloatField(
        required=False, min_value=0, max_value=1, help_text="Share of other votes agreeing (needs ≥ 2 votes)"
    )
    completed_only = forms.BooleanField(required=False)
    include_excluded = forms.BooleanField(
        required=False, help_text="Keep the work of raters excluded by quality control (left out by default)"
    )
    include_ties = forms.BooleanField(required=False, help_text="dpo/reward/segments: keep tie and all-bad pairs")
    gamma = forms.FloatField(initial=0.9, min_value=0, max_value=1, help_text="multiturn: discount γ")
    grounding_weight = forms.FloatField(initial=0.0, help_text="multiturn: reward per grounding act")
    segment_turns = forms.IntegerField(initial=3, min_value=1, help_text="segments: longest segment in messages")
    segments = forms.ChoiceField(
        choices=[(k, k) for k in SEGMENT_KINDS],
        initial="sdpo",
        help_text="segments: SDPO (starting at the reply the user reacted to as an error) or the pairs after it",
    )
    aggregate = forms.ChoiceField(
        choices=[(k, k) for k in AGGREGATES],
        initial="none",
        help_text="dpo/reward: one row per vote, or one per pair of replies by majority or by mean margin",
    )
    arena_history = forms.ChoiceField(
        choices=[(k, k) for k in ARENA_HISTORIES],
        initial="own",
        help_text="arena: each side holds its own model's earlier replies, or the lived ones",
    )
    licence = forms.CharField(initial="other", max_length=100, help_text="Written in the dataset card")
    split = forms.CharField(
        required=False, max_length=200, help_text="Splits and shares, e.g. train=0.9,test=0.1 (empty: one file)"
    )
    split_seed = forms.IntegerField(initial=0, help_text="Seed of the assignment of conversations to splits")

    def params(self) -> ExportParams:
        data = self.cleaned_data
        raters = [name.strip() for name in data["raters"].split(",") if name.strip()]
        models = [config.name for config in data["models"]]
        return ExportParams.from_dict({**data, "study": data["study"].slug, "raters": raters, "models": models})


@admin.register(DatasetExport)
class DatasetExportAdmin(admin.ModelAdmin):
    """'Add' is the export form; an export's page shows its progress, then the download links."""

    list_display = ("pk", "study", "format", "status", "progress_display", "rows", "created_at", "finished_at")
    list_filter = ("status", "format", "study")

    def get_urls(self) -> list[URLPattern]:
        custom = [
            path(
                "<int:pk>/progress/", self.admin_site.admin_view(self.progress), name="exports_datasetexport_progress"
            ),
            path(
                "<int:pk>/download/<str:name>",
                self.admin_site.admin_view(self.download),
                name="exports_datasetexport_download",
            ),
        ]
        return custom + super().get_urls()

    @admin.display(description="progress")
    def progress_display(self, export: DatasetExport) -> str:
        return f"{export.percent}%"

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # an export is a record; a new one is a new export

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        initial = {"study": request.GET.get("study")} if request.GET.get("study") else None
        form = ExportForm(request.POST or None, initial=initial)
        if request.method == "POST" and form.is_valid():
            try:
                # Admin views are behind staff login: the user is a real one.
                export = services.export_request(params=form.params(), requested_by=cast(User, request.user))
            except ActionRefused as exc:
                form.add_error(None, exc.message)
            else:
                messages.success(request, f"Export {export.pk} queued: this page shows its progress.")
                return redirect("admin:exports_datasetexport_change", export.pk)
        context = {
            **self.admin_site.each_context(request),
            "form": form,
            "title": "Export a dataset",
            "opts": self.opts,
        }
        return render(request, "admin/exports/datasetexport/add.html", context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        export = self.get_object(request, object_id)  # None for a missing or malformed id (not a 500)
        if export is None:
            raise Http404("No such export.")
        context = {
            **self.admin_site.each_context(request),
            "export": export,
            "files": services.export_files(export),
            # Re-read through ExportParams: jsonb does not keep the key order.
            "params": json.dumps(ExportParams.from_dict(export.params).as_manifest(), indent=2, ensure_ascii=False),
            "title": str(export),
            "opts": self.opts,
        }
        return render(request, "admin/exports/datasetexport/detail.html", context)

    def progress(self, request: HttpRequest, pk: int) -> HttpResponse:
        """The progress fragment the export's page polls (`exports.view_datasetexport`)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        export = get_object_or_404(DatasetExport.objects.select_related("study"), pk=pk)
        context = {"export": export, "files": services.export_files(export)}
        return render(request, "admin/exports/datasetexport/_progress.html", context)

    def download(self, request: HttpRequest, pk: int, name: str) -> StreamingHttpResponse:
        """One of the export's files (`exports.view_datasetexport`)."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        export = get_object_or_404(DatasetExport, pk=pk)
        if name not in services.export_files(export):  # only the export's own files, never a path
            raise Http404("No such file in this export.")
        path = Path(export.out_dir) / name
        # An async iterator: under ASGI, Django would read a FileResponse's file whole into memory.
        response = StreamingHttpResponse(_file_chunks(path), content_type="application/octet-stream")
        response["Content-Length"] = str(path.stat().st_size)
        response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=name)
        return response


async def _file_chunks(path: Path, size: int = 1 << 20) -> AsyncIterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := await asyncio.to_thread(fh.read, size):
            yield chunk


admin.site.unregister(Study)


@admin.register(Study)
class StudyWithExportsAdmin(StudyAdmin):
    """annotate's StudyAdmin plus the "Export dataset…" action and button."""

    change_form_template = "admin/exports/study_change_form.html"
    actions = ["export_dataset"]

    def has_export_permission(self, request: HttpRequest) -> bool:
        """Who may request an export: the action is only offered (and only runs) with `exports.add_datasetexport`."""
        return request.user.has_perm(f"{DatasetExport._meta.app_label}.add_{DatasetExport._meta.model_name}")

    @admin.action(description="Export dataset…", permissions=["export"])
    def export_dataset(self, request: HttpRequest, queryset: QuerySet[Study]) -> HttpResponse:
        """Opens the export form for the selected study (an export covers one study)."""
        study = queryset.order_by("pk").first()
        if study is None:
            return redirect("admin:annotate_study_changelist")
        if queryset.count() > 1:
            messages.warning(request, f"An export covers one study: the form is open for “{study}”.")
        return redirect(f"{reverse('admin:exports_datasetexport_add')}?study={study.pk}")
