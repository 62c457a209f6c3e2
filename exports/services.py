"""Exports requested in admin and run by a worker: queue, claim, run, list the files.

The command line (`manage.py export_dataset`) calls `exports.build.export_build` directly.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from core.errors import ActionRefused
from core.tasks import task_send
from exports.build import export_build
from exports.models import DatasetExport
from exports.selection import ExportParams, selection_open


def export_request(*, params: ExportParams, requested_by: User | None) -> DatasetExport:
    """Check the parameters now (so the researcher sees a mistake at once) and queue the export."""
    selection = selection_open(params, refuse=lambda message: ActionRefused(message, status=400))
    if selection.count() == 0:
        raise ActionRefused(f"No conversations in study “{params.study}” match the filters: nothing to export.")
    export = DatasetExport.objects.create(
        study=selection.study, format=params.format, params=params.as_manifest(), requested_by=requested_by
    )
    transaction.on_commit(lambda: task_send("exports.tasks.export_dataset_task", export.pk))
    return export


def export_output_dir(export: DatasetExport) -> Path:
    return Path(settings.EXPORT_DIR) / f"export-{export.pk}-{export.study.slug}-{export.format}"


def _export_claim(export_id: int) -> DatasetExport | None:
    """Take the export if it is queued, or running with a silent worker (it died). Conditional on
    the attempt, so two deliveries of the task never both run it."""
    export = DatasetExport.objects.select_related("study").filter(pk=export_id).first()
    if export is None or export.is_finished:
        return None
    stale = timezone.now() - dt.timedelta(seconds=settings.EXPORT_LEASE_SECONDS)
    claimable = Q(status=DatasetExport.Status.QUEUED) | Q(status=DatasetExport.Status.RUNNING, heartbeat_at__lt=stale)
    claimed = DatasetExport.objects.filter(claimable, pk=export_id, attempt=export.attempt).update(
        status=DatasetExport.Status.RUNNING, attempt=F("attempt") + 1, heartbeat_at=timezone.now()
    )
    if claimed != 1:
        return None
    export.refresh_from_db()
    return export


def export_run(*, export_id: int) -> str:
    """Run a queued export: 'done', 'failed', 'busy' (another worker holds it) or 'gone'."""
    export = _export_claim(export_id)
    if export is None:
        current = DatasetExport.objects.filter(pk=export_id).values_list("status", flat=True).first()
        return "busy" if current == DatasetExport.Status.RUNNING else "gone"
    mine = DatasetExport.objects.filter(pk=export.pk, attempt=export.attempt)
    out = export_output_dir(export)
    if out.exists():  # left by an earlier attempt that died after the rename
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    last_write = 0.0

    def progress(done: int, total: int, rows: int) -> None:
        nonlocal last_write
        if time.monotonic() - last_write >= 0.5 or done == total:
            last_write = time.monotonic()
            mine.update(conversations_done=done, conversations_total=total, rows=rows, heartbeat_at=timezone.now())

    try:
        result = export_build(params=ExportParams.from_dict(export.params), out=out, progress=progress)
    except ActionRefused as exc:
        mine.update(status=DatasetExport.Status.FAILED, error=exc.message, finished_at=timezone.now())
        return "failed"
    except Exception as exc:  # reported on the export's page, not lost in a worker log
        mine.update(status=DatasetExport.Status.FAILED, error=f"Unexpected error: {exc!r}", finished_at=timezone.now())
        raise
    mine.update(
        status=DatasetExport.Status.DONE,
        out_dir=str(result.out),
        rows=result.rows,
        sha256=result.sha256,
        conversations_done=result.conversations,
        conversations_total=result.conversations,
        finished_at=timezone.now(),
    )
    return "done"


def export_files(export: DatasetExport) -> list[str]:
    """The files of a finished export a researcher may download, data file first."""
    if export.status != DatasetExport.Status.DONE or not export.out_dir:
        return []
    manifest = Path(export.out_dir) / "manifest.json"
    if not manifest.is_file():
        return []
    data = [f["path"] for f in json.loads(manifest.read_text())["files"]]
    return [*data, "README.md", "manifest.json"]
