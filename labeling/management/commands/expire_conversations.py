from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from annotate.services import conversations_expire
from labeling.services import reviews_expire


class Command(BaseCommand):
    help = (
        "Expire the conversations and the open review assignments that had no activity for their study's "
        "assignment timeout, so their scenarios and conversations go back to the pool (what the worker's beat "
        "does every minute, docs/assignment.md). For cron where no beat runs, e.g. "
        "`* * * * * cd /srv/commonground && .venv/bin/python manage.py expire_conversations`. Idempotent."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        conversations = conversations_expire()
        reviews = reviews_expire()
        self.stdout.write(f"Expired {conversations} conversation(s) and {reviews} review assignment(s).")
