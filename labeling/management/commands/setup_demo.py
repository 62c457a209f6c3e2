from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from annotate.services import DEMO_ACCOUNTS
from labeling.services import demo_setup


class Command(BaseCommand):
    """Lives in labeling, not annotate: the demo needs the default taxonomy, a layer above annotate."""

    help = (
        "Create what is missing of the demo: the default taxonomy, the demo study 'demo' (two Gemma 3 270M "
        "configs, six scenarios) and the accounts 'admin' and 'rater'. What exists is never changed, so edits "
        "made in admin (the study's turn limit or instructions, a model's system prompt, a password) survive "
        "`make run`, which runs this at every start. --reset puts the demo back as shipped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--reset",
            action="store_true",
            help="put the demo study, its model configs, its shipped scenarios and the demo accounts' passwords "
            "back as shipped, overwriting edits (other studies and the taxonomy are left alone)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        passwords = demo_setup(reset=options["reset"])
        done = "put back as shipped" if options["reset"] else "ready"
        self.stdout.write(self.style.SUCCESS(f"Demo study 'demo' is {done}."))
        for username, password in passwords.items():
            if password is None:
                kept = f"(password kept; setup_demo --reset sets {DEMO_ACCOUNTS[username]})"
                self.stdout.write(f"  {username:6} / {kept}")
            else:
                self.stdout.write(f"  {username:6} / {password}")
