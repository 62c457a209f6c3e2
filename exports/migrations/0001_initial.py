"""DatasetExport, moved here from labeling (labeling.0003 renamed its table; rows are kept).

State only: the table already exists. The content type is moved too, so permissions granted on
exports and admin log entries keep pointing at the model.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def move_content_type(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    if not ContentType.objects.filter(app_label="exports", model="datasetexport").exists():
        ContentType.objects.filter(app_label="labeling", model="datasetexport").update(app_label="exports")


def move_content_type_back(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    ContentType.objects.filter(app_label="exports", model="datasetexport").update(app_label="labeling")


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("annotate", "0004_comparison_per_rater"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("labeling", "0003_move_datasetexport_to_exports"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="DatasetExport",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("format", models.CharField(max_length=20)),
                        ("params", models.JSONField(help_text="Every export parameter, as recorded in the manifest.")),
                        ("status", models.CharField(choices=[("queued", "Queued"), ("running", "Running"), ("done", "Done"), ("failed", "Failed")], default="queued", max_length=10)),
                        ("attempt", models.PositiveSmallIntegerField(default=0, help_text="How many times a worker claimed it.")),
                        ("conversations_total", models.PositiveIntegerField(default=0)),
                        ("conversations_done", models.PositiveIntegerField(default=0)),
                        ("rows", models.PositiveBigIntegerField(default=0)),
                        ("out_dir", models.CharField(blank=True, max_length=500)),
                        ("sha256", models.CharField(blank=True, max_length=64)),
                        ("error", models.TextField(blank=True)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("heartbeat_at", models.DateTimeField(blank=True, help_text="Last progress written by the worker.", null=True)),
                        ("finished_at", models.DateTimeField(blank=True, null=True)),
                        ("requested_by", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
                        ("study", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="exports", to="annotate.study")),
                    ],
                    options={"ordering": ["-created_at"]},
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(move_content_type, move_content_type_back),
    ]
