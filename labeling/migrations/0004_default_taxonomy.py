"""The shipped default taxonomy, created with the database so that no page has to write it.

Uses the historical models and the label fields as they are at this migration; a database that
already has a taxonomy with slug "default" (created on first read by earlier versions) keeps it.
"""

from pathlib import Path

import yaml
from django.db import migrations

DEFAULT_TAXONOMY_FILE = Path(__file__).resolve().parent.parent / "default_taxonomy.yaml"
LABEL_FIELDS = ("title", "kind", "definition", "examples", "roles", "takes_span", "links_turn", "polarity", "key",
                "colour")  # fmt: skip


def create_default_taxonomy(apps, schema_editor):
    Taxonomy = apps.get_model("labeling", "Taxonomy")
    Label = apps.get_model("labeling", "Label")
    document = yaml.safe_load(DEFAULT_TAXONOMY_FILE.read_text())
    if Taxonomy.objects.filter(slug=document["slug"]).exists():
        return
    taxonomy = Taxonomy.objects.create(
        slug=document["slug"], name=document["name"], description=document.get("description") or ""
    )
    for order, raw in enumerate(document["labels"]):
        fields = {field: raw[field] for field in LABEL_FIELDS if field in raw}
        fields.setdefault("title", raw["name"].replace("-", " ").capitalize())
        fields["key"] = str(fields.get("key") or "")[:1]
        Label.objects.create(taxonomy=taxonomy, name=raw["name"], order=order, **fields)


class Migration(migrations.Migration):
    dependencies = [
        ("labeling", "0003_move_datasetexport_to_exports"),
    ]

    operations = [migrations.RunPython(create_default_taxonomy, migrations.RunPython.noop)]
