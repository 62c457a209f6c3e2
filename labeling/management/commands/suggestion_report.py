from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from annotate.models import Study
from labeling.suggestions import REPHRASE_THRESHOLD, acceptance_rates


class Command(BaseCommand):
    help = (
        "How raters received the suggested tags: per label, how many were suggested, accepted, rejected "
        "and are still pending, and the acceptance rate (accepted / decided). Without a study slug, "
        "every study that has suggestions is reported."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("studies", nargs="*", metavar="STUDY", help="Slug(s) of the studies to report")
        parser.add_argument("--json", action="store_true", help="Print JSON (one object per study) instead of a table")

    def handle(self, *args: Any, **options: Any) -> None:
        slugs: list[str] = options["studies"]
        if slugs:
            studies = list(Study.objects.filter(slug__in=slugs).order_by("slug"))
            missing = set(slugs) - {s.slug for s in studies}
            if missing:
                raise CommandError(f"No study with slug {', '.join(sorted(missing))}.")
        else:
            studies = list(Study.objects.filter(conversations__turns__tags__source="suggestion").distinct())
        for study in studies:
            rows = acceptance_rates(study)
            if options["json"]:
                self.stdout.write(json.dumps({"study": study.slug, "labels": rows}))
                continue
            self.stdout.write(f"{study.slug} — {study.name} (rephrase threshold {REPHRASE_THRESHOLD})")
            if not rows:
                self.stdout.write("  no suggestions yet")
                continue
            self.stdout.write(
                f"  {'label':<20} {'suggested':>9} {'accepted':>9} {'rejected':>9} {'pending':>8} {'rate':>6}"
            )
            for row in rows:
                rate = "—" if row["rate"] is None else f"{row['rate']:.0%}"
                self.stdout.write(
                    f"  {row['label']:<20} {row['suggested']:>9} {row['accepted']:>9} {row['rejected']:>9} "
                    f"{row['pending']:>8} {rate:>6}"
                )
