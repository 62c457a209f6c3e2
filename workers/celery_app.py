"""The Celery app. Generation, tag suggestions and exports run on separate queues.

Reliability settings follow one rule: a task is acknowledged only after it finished, and a
redelivered task is harmless because every task claims its row with a conditional update.
"""

from __future__ import annotations

import os
import sys

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("commonground")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_soft_time_limit=600,
    task_time_limit=660,
    task_default_queue="generation",
    task_routes={
        "workers.tasks.sample_turn_task": {"queue": "generation"},
        # Tag suggestions never wait behind, or hold up, a generation.
        "workers.tasks.suggest_tags_task": {"queue": "suggestions"},
        "workers.tasks.export_dataset_task": {"queue": "exports"},
    },
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
app.autodiscover_tasks(["workers"])


@worker_process_init.connect
def _preload_models(**_: object) -> None:
    """Load configured models once per worker process, before the first task arrives."""
    from workers import backends

    backends.preload_from_settings()


def worker_argv(*, concurrency: int, name: str = "generation@%h") -> list[str]:
    """The command that starts a worker for every queue (`serve`, the tests, bench/)."""
    return [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", "generation,suggestions,exports",
            "-c", str(concurrency), "--loglevel", "INFO", "-n", name]  # fmt: skip
