from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection

from annotate.services import DEMO_ACCOUNTS
from core.env import envint
from workers.celery_app import worker_argv
from workers.models import ModelConfig

GENERATION_QUEUES = ("generation",)
# Replies from model servers (`openai`) wait on the network: a threads pool samples many at once, drawing
# its database connections from the pool between row writes (annotate.generation.connection_between_writes).
IO_QUEUES = ("generation_io",)
# Suggestion models (MiniLM) and exports load and run here, never in a generation slot; beat runs here too.
SIDE_QUEUES = ("suggestions", "exports")
# Connections no process of ours takes from the budget: the embedded beat, `manage.py` commands, admin shells.
RESERVE_CONNECTIONS = 2


def default_web_workers() -> int:
    """WEB_WORKERS, else one web process per CPU."""
    return max(envint("WEB_WORKERS", os.cpu_count() or 1), 1)


@dataclass(frozen=True)
class ConnectionBudget:
    """The PostgreSQL connections a `serve` set-up may hold at once, at most.

    Web processes hold at most their pool's `DB_POOL_MAX_SIZE` each. Workers run without the pool, one
    connection per task slot (`--concurrency`); an export may fork `EXPORT_PROCESSES` writers, each with a
    connection of its own, in every slot of the suggestions/exports worker."""

    web_processes: int
    pool_max_size: int
    generation_concurrency: int = 0
    io_worker: bool = False
    side_concurrency: int = 0
    export_processes: int = 1
    reserve: int = RESERVE_CONNECTIONS

    @property
    def parts(self) -> dict[str, int]:
        return {
            f"web: {self.web_processes} processes × DB_POOL_MAX_SIZE {self.pool_max_size}": self.web_processes
            * self.pool_max_size,
            f"generation worker: --concurrency {self.generation_concurrency}": self.generation_concurrency,
            f"model-server worker: its pool, DB_POOL_MAX_SIZE {self.pool_max_size}": self.pool_max_size
            if self.io_worker
            else 0,
            f"suggestions/exports worker: {self.side_concurrency} × EXPORT_PROCESSES {self.export_processes}": (
                self.side_concurrency * max(self.export_processes, 1)
            ),
            "beat, manage.py and admin": self.reserve,
        }

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def budget_error(budget: ConnectionBudget, *, max_connections: int, reserved: int) -> str:
    """Why `budget` does not fit in the server's `max_connections` less its `reserved` (superuser and
    reserved_connections) slots, naming the numbers to lower; "" when it fits."""
    available = max_connections - reserved
    if budget.total <= available:
        return ""
    lines = "\n".join(f"  {count:>5}  {what}" for what, count in budget.parts.items() if count)
    return (
        f"This set-up may open {budget.total} database connections; PostgreSQL takes {available} "
        f"(max_connections {max_connections} − {reserved} reserved):\n{lines}\n"
        "Lower --web-workers (WEB_WORKERS), DB_POOL_MAX_SIZE, --concurrency, --side-concurrency or "
        "EXPORT_PROCESSES, or raise max_connections on the server; --force starts anyway."
    )


def server_connection_limits() -> tuple[int, int]:
    """PostgreSQL's max_connections and the slots ordinary roles cannot use (superuser_reserved_connections,
    and reserved_connections on PostgreSQL 16+)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('max_connections')::int, "
            "current_setting('superuser_reserved_connections')::int, "
            "coalesce(current_setting('reserved_connections', true), '0')::int"
        )
        max_connections, superuser, reserved = cursor.fetchone()
    return int(max_connections), int(superuser) + int(reserved)


# Suggestions and exports yield the CPU to raters' requests and generation (a suggestion may come a little
# later under load; a vote must not wait behind an embedding). Beat shares that process: its sweeps are light.
NICENESS = {"suggestions/exports worker": 10}


def process_commands(
    *,
    host: str,
    port: int,
    web_workers: int,
    concurrency: int,
    side_concurrency: int,
    io_concurrency: int = 32,
    pool: str = "",
    worker: bool = True,
) -> dict[str, list[str]]:
    """The processes `serve` starts, by role: uvicorn with `web_workers` processes, and (with `worker`) one
    Celery worker for the generation queue and one for suggestions and exports with beat embedded."""
    commands = {
        "web": [
            sys.executable,
            "-m",
            "uvicorn",
            "config.asgi:application",
            "--host",
            host,
            "--port",
            str(port),
            "--no-access-log",
            "--workers",
            str(web_workers),
            "--timeout-keep-alive",
            str(settings.WEB_KEEPALIVE_SECONDS),
        ],  # fmt: skip
    }
    if worker:
        commands["generation worker"] = worker_argv(
            concurrency=concurrency, name="generation@%h", queues=GENERATION_QUEUES, pool=pool
        )
        commands["model-server worker"] = worker_argv(
            concurrency=io_concurrency, name="io@%h", queues=IO_QUEUES, pool="threads"
        )
        # With beat embedded: the expiry and recovery sweeps (workers.celery_app.BEAT_SCHEDULE).
        commands["suggestions/exports worker"] = worker_argv(
            concurrency=side_concurrency, name="side@%h", queues=SIDE_QUEUES, beat=True
        )
    return commands


def process_envs(env: dict[str, str], preload: str) -> dict[str, dict[str, str]]:
    """Each role's environment: models are preloaded in the generation worker only; workers hold one
    connection per task slot, without the pool (an export forks writers; Celery closes connections after each
    task anyway)."""
    workers = {**env, "DB_POOL": "0"}
    return {
        "web": dict(env),
        "generation worker": {**workers, "WORKER_PRELOAD_MODELS": preload},
        "model-server worker": {**env, "WORKER_PRELOAD_MODELS": ""},  # threads share the pool
        "suggestions/exports worker": {**workers, "WORKER_PRELOAD_MODELS": ""},
    }


class Command(BaseCommand):
    help = (
        "Start the web server (uvicorn, ASGI, one process per CPU) and three Celery workers: one for local models, "
        "one (threads) for model servers, one for tag suggestions and exports with beat (the expiry and recovery "
        "sweeps); Ctrl-C stops them all. "
        "Uses whatever DATABASE_URL and CELERY_BROKER_URL say (SQLite and a filesystem broker by default). On "
        "PostgreSQL it first checks that the connections it may open fit in max_connections."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument(
            "--concurrency", type=int, default=2, help="Generation worker processes (each loads the model)"
        )
        parser.add_argument(
            "--pool", default="", help="Celery pool of the generation worker (default prefork; e.g. threads)"
        )
        parser.add_argument(
            "--side-concurrency", type=int, default=1, help="Processes of the suggestions/exports worker"
        )
        parser.add_argument(
            "--io-concurrency",
            type=int,
            default=32,
            help="Threads of the model-server worker (openai configs: replies that wait on the network)",
        )
        parser.add_argument("--no-worker", action="store_true", help="Only the web server")
        parser.add_argument(
            "--web-workers",
            type=int,
            default=default_web_workers(),
            help="uvicorn processes (default WEB_WORKERS, else the CPU count)",
        )
        parser.add_argument(
            "--force", action="store_true", help="Start even if the database connections may not suffice"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        for name in ("web_workers", "concurrency", "side_concurrency", "io_concurrency"):
            if options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1")
        worker = not options["no_worker"]
        self._check_connections(options, worker=worker)
        env = dict(os.environ)
        preload = env.get("WORKER_PRELOAD_MODELS", "")
        if worker and not preload:
            names = ModelConfig.objects.filter(enabled=True, backend=ModelConfig.Backend.TRANSFORMERS)
            preload = ",".join(names.values_list("name", flat=True))
        _release_connections()  # this process keeps none while its children run
        commands = process_commands(
            host=options["host"],
            port=options["port"],
            web_workers=options["web_workers"],
            concurrency=options["concurrency"],
            side_concurrency=options["side_concurrency"],
            io_concurrency=options["io_concurrency"],
            pool=options["pool"],
            worker=worker,
        )
        envs = process_envs(env, preload)
        processes = {
            role: subprocess.Popen(
                cmd, env=envs[role], cwd=settings.BASE_DIR, preexec_fn=partial(os.nice, NICENESS.get(role, 0))
            )
            for role, cmd in commands.items()
        }
        stopping = False
        announced = False

        def stop(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping and all(p.poll() is None for p in processes.values()):
                if not announced and _answers(options["host"], options["port"]):
                    announced = True
                    self._announce(options["host"], options["port"])
                time.sleep(0.3)
        finally:
            for p in processes.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 15
            for p in processes.values():
                try:
                    p.wait(timeout=max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    p.kill()
        failed = [
            name for name, p in processes.items() if p.returncode not in (0, -signal.SIGTERM, None) and not stopping
        ]
        if failed:
            self.stderr.write(f"Stopped because a process exited: {', '.join(failed)}")
            sys.exit(1)

    def _check_connections(self, options: dict[str, Any], *, worker: bool) -> None:
        """On PostgreSQL, refuse (exit 1) a set-up whose connections may exceed max_connections."""
        if connection.vendor != "postgresql":
            return
        if not settings.DB_POOL:
            self.stderr.write(
                "DB_POOL=0: web processes open a connection per thread, so serve cannot bound them; "
                "PostgreSQL may refuse connections under load."
            )
            return
        budget = ConnectionBudget(
            web_processes=options["web_workers"],
            pool_max_size=settings.DB_POOL_MAX_SIZE,
            generation_concurrency=options["concurrency"] if worker else 0,
            io_worker=worker,
            side_concurrency=options["side_concurrency"] if worker else 0,
            export_processes=settings.EXPORT_PROCESSES,
        )
        max_connections, reserved = server_connection_limits()
        problem = budget_error(budget, max_connections=max_connections, reserved=reserved)
        if problem and not options["force"]:
            self.stderr.write(problem)
            sys.exit(1)
        if problem:
            self.stderr.write(f"--force: starting anyway.\n{problem}")

    def _announce(self, host: str, port: int) -> None:
        """The address (and the demo login), printed once the server answers, below the start-up logs."""
        lines = [f"Common Ground is running on http://{host}:{port}/  (Ctrl-C stops the server and the workers)"]
        rater = get_user_model().objects.filter(username="rater").first()
        _release_connections()
        if rater is not None and rater.check_password(DEMO_ACCOUNTS["rater"]):
            lines.append(f"Demo logins: rater / {DEMO_ACCOUNTS['rater']}   admin / {DEMO_ACCOUNTS['admin']} (/admin/)")
        self.stdout.write(self.style.SUCCESS("\n".join(lines)))


def _release_connections() -> None:
    """Close this process's connection, and its pool (which would keep DB_POOL_MIN_SIZE open)."""
    connection.close()
    close_pool = getattr(connection, "close_pool", None)
    if close_pool is not None:
        close_pool()


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True
