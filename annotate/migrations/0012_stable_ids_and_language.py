"""Stable UUIDs for conversations and turns (datasets name them by it), and a study's language.

The UUID columns are added empty, filled for the rows already there (in one UPDATE on PostgreSQL,
in batches elsewhere), then made unique and required: a callable default given to AddField would
be evaluated once and give every existing row the same value.
"""

import uuid

from django.db import migrations, models

import annotate.models

BATCH = 2000


def fill_uuids(apps, schema_editor):
    for name in ("Conversation", "Turn"):
        model = apps.get_model("annotate", name)
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(f"UPDATE {model._meta.db_table} SET uuid = gen_random_uuid() WHERE uuid IS NULL")
            continue
        while True:
            ids = list(model.objects.filter(uuid__isnull=True).values_list("pk", flat=True)[:BATCH])
            if not ids:
                break
            model.objects.bulk_update([model(pk=pk, uuid=uuid.uuid4()) for pk in ids], ["uuid"])


class Migration(migrations.Migration):
    dependencies = [
        ("annotate", "0011_turn_note"),
    ]

    operations = [
        migrations.AddField(
            model_name="study",
            name="language",
            field=models.CharField(
                default="en",
                help_text="BCP 47 tag of the language raters write in (e.g. en, de, pt-BR): declared in each dataset "
                "row and in the dataset card. Declared by the researcher, not detected.",
                max_length=35,
                validators=[annotate.models.LANGUAGE_TAG],
            ),
        ),
        migrations.AddField(model_name="conversation", name="uuid", field=models.UUIDField(null=True, editable=False)),
        migrations.AddField(model_name="turn", name="uuid", field=models.UUIDField(null=True, editable=False)),
        migrations.RunPython(fill_uuids, migrations.RunPython.noop, elidable=False),
        migrations.AlterField(
            model_name="conversation",
            name="uuid",
            field=models.UUIDField(default=uuid.uuid4, editable=False, unique=True),
        ),
        migrations.AlterField(
            model_name="turn",
            name="uuid",
            field=models.UUIDField(default=uuid.uuid4, editable=False, unique=True),
        ),
    ]
