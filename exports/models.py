"""Exports requested in admin (or by a task): what was asked, its progress and the finished files."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class DatasetExport(models.Model):
    """A requested export (admin or task), its progress, and where the finished files are.

    The command line (`manage.py export_dataset`) writes straight to a path and needs no row.
    """

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    study = models.ForeignKey("annotate.Study", on_delete=models.CASCADE, related_name="exports")
    format = models.CharField(max_length=20)
    params = models.JSONField(help_text="Every export parameter, as recorded in the manifest.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    attempt = models.PositiveSmallIntegerField(default=0, help_text="How many times a worker claimed it.")
    conversations_total = models.PositiveIntegerField(default=0)
    conversations_done = models.PositiveIntegerField(default=0)
    rows = models.PositiveBigIntegerField(default=0)
    out_dir = models.CharField(max_length=500, blank=True)
    sha256 = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True, help_text="Last progress written by the worker.")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Export {self.pk}: {self.format} of {self.study}"

    @property
    def percent(self) -> int:
        if self.status == self.Status.DONE:
            return 100
        return int(100 * self.conversations_done / self.conversations_total) if self.conversations_total else 0

    @property
    def is_finished(self) -> bool:
        return self.status in {self.Status.DONE, self.Status.FAILED}
