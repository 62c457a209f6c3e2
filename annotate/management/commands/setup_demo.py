from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from annotate import services


class Command(BaseCommand):
    help = (
        "Create or refresh the demo study (two Gemma 3 270M configs, six scenarios) and the demo accounts "
        "'admin' and 'rater'. Resets the demo accounts' passwords and prints them."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        accounts = services.demo_setup()
        self.stdout.write(self.style.SUCCESS("Demo study 'demo' is ready."))
        for username, password in accounts.items():
            self.stdout.write(f"  {username:6} / {password}")
