from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotate import services
from annotate.models import Study
from core.errors import ActionRefused


class Command(BaseCommand):
    help = (
        "Import scenarios into a study from a JSONL or CSV file. Fields: external_id (or id), title, brief "
        "(required), hidden_intent, opening_message; other fields are kept as metadata. Re-importing a file "
        "updates scenarios with the same external_id. A file with any bad row writes nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help="Path to a .jsonl or .csv file")
        parser.add_argument("--study", required=True, help="Slug of the study to import into")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        study = Study.objects.filter(slug=options["study"]).first()
        if study is None:
            raise CommandError(f"No study with slug {options['study']!r}.")
        if not path.is_file():
            raise CommandError(f"{path} is not a file.")
        try:
            rows = services.scenario_rows_read(name=path.name, data=path.read_bytes())
            created, updated = services.scenarios_import(study=study, rows=rows)
        except ActionRefused as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(self.style.SUCCESS(f"{study.slug}: {created} scenarios created, {updated} updated."))
