from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from annotate.services import demo_setup
from labeling.services import default_taxonomy


class Command(BaseCommand):
    """Lives in labeling, not annotate: the demo needs the default taxonomy, a layer above annotate."""

    help = (
        "Create or refresh the demo study (two Gemma 3 270M configs, six scenarios), the default taxonomy "
        "if it is missing, and the demo accounts 'admin' and 'rater'. Resets the demo accounts' passwords and "
        "prints them."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        default_taxonomy()
        accounts = demo_setup()
        self.stdout.write(self.style.SUCCESS("Demo study 'demo' is ready."))
        for username, password in accounts.items():
            self.stdout.write(f"  {username:6} / {password}")
