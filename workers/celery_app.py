"""The Celery app: broker, queues, routes, time limits and transport options, all here.

Reliability follows one rule: a task is acknowledged only after it finished, and a redelivered
task is harmless because every task claims its row with a conditional update (a turn's or an
export's `attempt`). Tasks are named and routed by name, so this module imports no app above it.

How the numbers fit together (change one, check the others):

* A generation task may run up to GENERATION_TIME_LIMIT; an export up to EXPORT_TIME_LIMIT.
* A claimed turn whose worker wrote nothing for TURN_LEASE_SECONDS (60 s), or an export that
  reported no progress for EXPORT_LEASE_SECONDS (60 s), may be taken over by a redelivered copy.
* On Redis, a message whose worker vanished without a word is handed out again only after
  VISIBILITY_TIMEOUT (900 s). That is above the generation limit, so a live generation is never
  handed out twice. It is *below* the export limit: a long export's message can be redelivered
  while the export still runs. That is safe only because of the export lease: the copy finds the
  export running with a fresh heartbeat and retries later (`exports.services.export_run` →
  'busy'), and takes it over only once the first worker has gone quiet.

Periodic work (BEAT_SCHEDULE): every EXPIRY_SWEEP_SECONDS (60 s) the idle conversations and review
assignments of every study expire (`annotate.tasks.expire_conversations_task`,
`labeling.tasks.expire_reviews_task`), so their scenarios and conversations return to the pool; every
RECOVER_SWEEP_SECONDS (15 s) replies whose worker was lost are taken up again and lost messages resent
(`annotate.tasks.recover_turns_task`), so a turn never waits for the visibility timeout. Beat runs
inside the worker that `serve` starts (`worker_argv(beat=True)`: `-B`, with an in-memory schedule, which
suits the embedded filesystem broker and writes no file); with separate workers run one
`celery -A workers beat` (or `manage.py expire_conversations` from cron). Both sweeps are idempotent, so two
beats, or a late one, do no harm; assignment never waits for them (a start expires its study's idle
conversations itself, a review claim its study's idle reviews).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from celery import Celery
from celery.signals import worker_process_init
from django.conf import settings

from core.env import envbool, envint
from workers import backends

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# generation: local models, CPU-bound (prefork, one process per core); generation_io: model servers
# (`openai`), I/O-bound (a threads pool far above the CPU count; `workers.backends.generation_queue`).
QUEUES = ("generation", "generation_io", "suggestions", "exports")
GENERATION_SOFT_TIME_LIMIT, GENERATION_TIME_LIMIT = 600, 660
EXPORT_SOFT_TIME_LIMIT, EXPORT_TIME_LIMIT = 3600, 3660
VISIBILITY_TIMEOUT = envint("CELERY_VISIBILITY_TIMEOUT", 900)
BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
EXPIRY_SWEEP_SECONDS = envint("EXPIRY_SWEEP_SECONDS", 60)
RECOVER_SWEEP_SECONDS = envint("RECOVER_SWEEP_SECONDS", 15)
BEAT_SCHEDULE = {
    name: {"task": task, "schedule": float(every), "options": {"expires": every}}
    for name, task, every in (
        ("expire-conversations", "annotate.tasks.expire_conversations_task", EXPIRY_SWEEP_SECONDS),
        ("expire-reviews", "labeling.tasks.expire_reviews_task", EXPIRY_SWEEP_SECONDS),
        ("recover-turns", "annotate.tasks.recover_turns_task", RECOVER_SWEEP_SECONDS),
    )
}


def broker_transport_options(broker_url: str) -> dict[str, Any]:
    """Redis: the visibility timeout above. The embedded filesystem broker: its folders, all
    under VAR_DIR (kombu would otherwise put its control folder in the working directory)."""
    options: dict[str, Any] = {"visibility_timeout": VISIBILITY_TIMEOUT}
    if broker_url.startswith("filesystem"):
        broker_dir = settings.VAR_DIR / "broker"
        for sub in ("queue", "processed", "control"):
            (broker_dir / sub).mkdir(parents=True, exist_ok=True)
        options.update(
            data_folder_in=str(broker_dir / "queue"),
            data_folder_out=str(broker_dir / "queue"),
            processed_folder=str(broker_dir / "processed"),
            control_folder=str(broker_dir / "control"),
            store_processed=False,
            polling_interval=0.1,
        )
    return options


app = Celery("commonground")
app.conf.update(
    broker_url=BROKER_URL,
    broker_transport_options=broker_transport_options(BROKER_URL),
    broker_connection_retry_on_startup=True,
    task_always_eager=envbool("CELERY_TASK_ALWAYS_EAGER", False),
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    task_soft_time_limit=GENERATION_SOFT_TIME_LIMIT,
    task_time_limit=GENERATION_TIME_LIMIT,
    task_default_queue="generation",
    task_routes={
        "annotate.tasks.sample_turn_task": {"queue": "generation"},
        # Tag suggestions never wait behind, or hold up, a generation.
        "labeling.tasks.suggest_tags_task": {"queue": "suggestions"},
        "exports.tasks.export_dataset_task": {"queue": "exports"},
        # The expiry sweeps are short: with the suggestions, never behind a generation or an export.
        "annotate.tasks.expire_conversations_task": {"queue": "suggestions"},
        "labeling.tasks.expire_reviews_task": {"queue": "suggestions"},
        "annotate.tasks.recover_turns_task": {"queue": "suggestions"},
        "labeling.tasks.dashboard_refresh_task": {"queue": "suggestions"},
    },
    beat_schedule=BEAT_SCHEDULE,
    # In memory: a missed run is simply the next one (the sweeps catch up), and nothing is written to disk.
    beat_scheduler="celery.beat:Scheduler",
    task_annotations={
        "exports.tasks.export_dataset_task": {
            "soft_time_limit": EXPORT_SOFT_TIME_LIMIT,
            "time_limit": EXPORT_TIME_LIMIT,
        },
    },
)
# Each app's tasks.py (annotate, labeling, exports), found through INSTALLED_APPS.
app.autodiscover_tasks()


@worker_process_init.connect
def _preload_models(**_: object) -> None:
    """Load configured models once per worker process, before the first task arrives."""
    backends.preload_from_settings()


def worker_argv(
    *,
    concurrency: int,
    name: str = "generation@%h",
    beat: bool = False,
    queues: tuple[str, ...] | list[str] = QUEUES,
    pool: str = "",
) -> list[str]:
    """The command that starts a worker (`serve`, the tests, bench/): for every queue unless `queues` names
    some (`serve` runs one worker for "generation" and one for "suggestions,exports", so a suggestion model or
    an export never takes a generation slot); `pool` is Celery's execution pool (prefork when empty; e.g.
    "threads" for I/O-bound backends); `beat` embeds the periodic scheduler (`-B`: BEAT_SCHEDULE), for a
    single-machine setup such as `serve`'s."""
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown or not queues:
        raise ValueError(f"queues must be some of {QUEUES}, not {list(queues)}")
    return [sys.executable, "-m", "celery", "-A", "workers", "worker", "-Q", ",".join(queues),
            "-c", str(concurrency), "--loglevel", "INFO", "-n", name, *(["-P", pool] if pool else []),
            *(["-B"] if beat else [])]  # fmt: skip
