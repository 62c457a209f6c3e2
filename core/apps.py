from __future__ import annotations

from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    verbose_name = "Core"

    def ready(self) -> None:
        from core.db import register_fork_hook

        # Forked children (export writers, Celery's prefork pool) open connection pools of their own.
        register_fork_hook()
