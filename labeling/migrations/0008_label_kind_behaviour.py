"""A label kind for non-grounding behaviours, and the default taxonomy's topic switch and over-response moved to it.

They were shipped as grounding acts, so the dashboard's grounding rate (and the `multiturn` export's grounding
component) counted a model that over-responds as one that grounds more. Only labels still of kind grounding move:
a researcher who changed one keeps their choice. The stored dashboard figures counted them, so they are dropped
and computed again.
"""

from django.db import migrations, models

DEFAULT_SLUG = "default"
BEHAVIOURS = ("topic-switch", "over-response")


def _labels(apps, kind):
    Label = apps.get_model("labeling", "Label")
    return Label.objects.filter(taxonomy__slug=DEFAULT_SLUG, name__in=BEHAVIOURS, kind=kind)


def to_behaviour(apps, schema_editor):
    if _labels(apps, "grounding").update(kind="behaviour"):
        apps.get_model("labeling", "DashboardSnapshot").objects.all().delete()


def to_grounding(apps, schema_editor):
    if _labels(apps, "behaviour").update(kind="grounding"):
        apps.get_model("labeling", "DashboardSnapshot").objects.all().delete()


class Migration(migrations.Migration):
    dependencies = [
        ("labeling", "0007_dashboard_snapshot"),
    ]

    operations = [
        migrations.AlterField(
            model_name="label",
            name="kind",
            field=models.CharField(
                choices=[
                    ("grounding", "Grounding act"),
                    ("behaviour", "Non-grounding behaviour (over-response, topic switch…)"),
                    ("feedback", "Implicit feedback signal"),
                    ("other", "Other"),
                ],
                default="grounding",
                max_length=20,
            ),
        ),
        migrations.RunPython(to_behaviour, to_grounding),
    ]
