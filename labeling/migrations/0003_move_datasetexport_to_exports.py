"""DatasetExport moves to the `exports` app: its table is renamed and its rows kept.

The database keeps the table (renamed to exports_datasetexport); only Django's model state moves.
exports.0001_initial declares the model there without touching the database.
"""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("labeling", "0002_dataset_export"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[migrations.AlterModelTable(name="DatasetExport", table="exports_datasetexport")],
            state_operations=[migrations.DeleteModel(name="DatasetExport")],
        )
    ]
