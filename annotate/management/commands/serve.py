from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser

from annotate.services import DEMO_ACCOUNTS
from workers.celery_app import worker_argv
from workers.models import ModelConfig


class Command(BaseCommand):
    help = (
        "Start the web server (uvicorn, ASGI) and a Celery worker (with beat: the expiry sweeps) together; "
        "Ctrl-C stops both. "
        "Uses whatever DATABASE_URL and CELERY_BROKER_URL say (SQLite and a filesystem broker by default)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
        parser.add_argument("--concurrency", type=int, default=2, help="Worker processes (each loads the model)")
        parser.add_argument("--no-worker", action="store_true", help="Only the web server")
        parser.add_argument(
            "--web-workers", type=int, default=1, help="uvicorn processes (Django runs sync views on one thread each)"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        env = dict(os.environ)
        if not env.get("WORKER_PRELOAD_MODELS"):
            names = ModelConfig.objects.filter(enabled=True, backend=ModelConfig.Backend.TRANSFORMERS)
            env["WORKER_PRELOAD_MODELS"] = ",".join(names.values_list("name", flat=True))
        commands = [
            [
                sys.executable,
                "-m",
                "uvicorn",
                "config.asgi:application",
                "--host",
                options["host"],
                "--port",
                str(options["port"]),
                "--no-access-log",
                "--workers",
                str(options["web_workers"]),
            ],
        ]
        if not options["no_worker"]:
            # With beat embedded: the expiry sweeps (workers.celery_app.BEAT_SCHEDULE) run every minute.
            commands.append(worker_argv(concurrency=options["concurrency"], beat=True))
        processes = {cmd[2]: subprocess.Popen(cmd, env=env, cwd=settings.BASE_DIR) for cmd in commands}
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

    def _announce(self, host: str, port: int) -> None:
        """The address (and the demo login), printed once the server answers, below the start-up logs."""
        lines = [f"Common Ground is running on http://{host}:{port}/  (Ctrl-C stops the server and the worker)"]
        rater = get_user_model().objects.filter(username="rater").first()
        if rater is not None and rater.check_password(DEMO_ACCOUNTS["rater"]):
            lines.append(f"Demo logins: rater / {DEMO_ACCOUNTS['rater']}   admin / {DEMO_ACCOUNTS['admin']} (/admin/)")
        self.stdout.write(self.style.SUCCESS("\n".join(lines)))


def _answers(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True
