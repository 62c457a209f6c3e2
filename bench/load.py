#!/usr/bin/env python
"""load: hundreds of simulated raters on the whole stack at once (issue 11's benchmark).

The stack is started as production runs it, on a database and Redis db of the bench's own:

- PostgreSQL database ``cg_bench_load`` (created if missing, ``manage.py migrate``), Redis db 6 as the Celery
  broker, the turn feed and the cache (flushed before and after);
- ``bench/fake_openai.py``: an OpenAI-compatible server streaming one word every ``--interval`` s for
  ``--words`` words (1.5 s a reply by default), so the model is never the bottleneck and what is measured is
  the app: web tier, queue, workers, database;
- one study per step, K=2, whose model pool is one ``openai`` ModelConfig pointing at that server, and
  fresh rater accounts for every step (so no step inherits another's half-done conversations), created
  through the ORM by this script run again as a subprocess (``--setup``): this process never imports Django,
  so it holds no database connection and is not counted in the figures;
- ``manage.py serve`` with explicit flags (``--web-workers``, 64 threads for the model-server replies,
  ``--side-concurrency``): its ``--help`` is read at run time (see `Stack`), and when it lacks one of those
  flags the same processes are started directly (uvicorn + Celery workers);

then runs locust headless (a subprocess: gevent's monkeypatching never enters our processes) with
``bench/locustfile.py`` for each step of ``--raters`` for ``--duration`` seconds each. While a step runs, a
thread polls every 0.5 s: PostgreSQL connections to the bench database (``pg_stat_activity``, from a
connection to the ``postgres`` database so the poll does not count itself), the depth of the ``generation``
queue (Redis ``LLEN``), and the RSS of the web and worker process trees (psutil). After a step it waits for
the queue to drain (``--drain-timeout``) before the next, and counts the step's assistant turns still
pending or streaming then ("stuck").

Per step it prints a row; at the end a markdown table for docs/benchmarks.md, and ``--json`` writes every row
with all request kinds' percentiles.

``--faults`` runs one step against a private PostgreSQL cluster (initdb into a temporary directory, a spare
port), SIGKILLs the generation worker and restarts PostgreSQL mid-window, and then checks the votes, the turns
and the web tier's recovery (`Faults`). The method and the columns: docs/benchmarks.md, "Load (issue 11)".

    .venv/bin/python bench/load.py                                  # 25,50,100,200,400 raters x 120 s
    .venv/bin/python bench/load.py --raters 10 --duration 30        # smoke run
    .venv/bin/python bench/load.py --json var/load.json --keep-logs
    .venv/bin/python bench/load.py --faults [--max-connections 30]   # 50 raters, faults, then the checks
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from common import (  # noqa: E402
    ROOT,
    Child,
    ensure_database,
    fake_model_config,
    flush_broker,
    free_port,
    percentile,
    refuse_shared,
    stack_stop,
)

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/cg_bench_load"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/6"
CONFIG_NAME = "load-fake-openai"
PASSWORD = "load-rater-password"
GENERATION_QUEUES = ("generation", "generation_io")  # queue depth: the sum of their LLENs (absent: 0)
POLL_SECONDS = 0.5
SERVE_FLAGS = ("--host", "--port", "--web-workers", "--concurrency", "--pool", "--side-concurrency")
# Custom events of bench/locustfile.py: timed or counted, but no HTTP request.
EVENTS = {"first token", "reply", "reply failed", "stream reconnect"}


# --- command line and safety ------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Load bench: simulated raters (locust) against the whole stack with a fake streaming model.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--raters",
        default=None,
        help="comma-separated steps (simulated raters); default 25,50,100,200,400, --faults 50",
    )
    parser.add_argument(
        "--duration", type=int, default=120, help="seconds of each step's measurement window (after logins)"
    )
    parser.add_argument(
        "--spawn-rate", type=float, default=0, help="raters started (logged in) per second; 0: raters / 10"
    )
    parser.add_argument("--turns", type=int, default=5, help="messages per conversation (the study's turn limit)")
    parser.add_argument("--think", default="3,8", help="think time after a vote, min,max seconds")
    parser.add_argument("--words", type=int, default=30, help="words per fake reply")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between the fake model's words")
    parser.add_argument(
        "--max-queued-turns",
        type=int,
        default=0,
        help="the study's busy bound (new conversations refused with 503 + Retry-After above it); 0: none",
    )
    parser.add_argument(
        "--web-workers", type=int, default=os.cpu_count() or 1, help="uvicorn processes (serve --web-workers)"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="slots sampling the fake model's replies (serve --io-concurrency, or --concurrency without it)",
    )
    parser.add_argument(
        "--pool", default="threads", help="their Celery pool, where serve has no model-server worker (serve --pool)"
    )
    parser.add_argument("--side-concurrency", type=int, default=1, help="suggestions/exports worker processes")
    parser.add_argument(
        "--stack",
        choices=("auto", "serve", "direct"),
        default="auto",
        help="serve: `manage.py serve` with explicit flags; direct: uvicorn + Celery workers started here; "
        "auto: serve when its --help has every flag needed",
    )
    parser.add_argument("--force", action="store_true", help="pass --force to serve (connection budget check)")
    parser.add_argument("--drain-timeout", type=float, default=120, help="seconds to wait for the queue after a step")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_LOAD_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL database of the bench (created and migrated if missing); env BENCH_LOAD_DATABASE_URL",
    )
    parser.add_argument(
        "--broker-url",
        default=os.environ.get("BENCH_LOAD_BROKER_URL", DEFAULT_BROKER_URL),
        help="Redis db of the bench (broker, turn feed, cache; flushed before and after); env BENCH_LOAD_BROKER_URL",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the rows (all kinds' percentiles) here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs and locust CSVs (path printed)")
    parser.add_argument(
        "--faults",
        action="store_true",
        help="issue 11's fault mode: a private PostgreSQL cluster, the generation worker SIGKILLed at 25%% of the "
        "window and started again, PostgreSQL restarted at 55%%; then the vote, turn and recovery checks",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=100,
        help="--faults: the private cluster's max_connections (low: connection exhaustion forced)",
    )
    parser.add_argument("--setup", default="", help=argparse.SUPPRESS)  # internal: the ORM set-up subprocess
    args = parser.parse_args(argv)
    if args.setup:
        return args
    if args.raters is None:
        args.raters = "50" if args.faults else "25,50,100,200,400"
    try:
        args.steps = [int(n) for n in args.raters.split(",") if n.strip()]
        args.think_range = tuple(float(s) for s in args.think.split(","))
    except ValueError:
        parser.error("--raters and --think take comma-separated numbers")
    if not args.steps or min(args.steps) < 1 or len(args.think_range) != 2 or args.duration < 5 or args.turns < 1:
        parser.error("--raters must be positive, --think min,max, --duration at least 5, --turns at least 1")
    if args.faults and args.stack == "serve":
        parser.error("--faults needs --stack direct (serve stops every process when one worker is killed)")
    if args.faults:
        args.stack = "direct"
    return args


# --- set-up through the ORM (run as `load.py --setup SPEC` in a subprocess) --------------------------


def setup(spec: dict[str, Any]) -> dict[str, Any]:
    """The model config, one study per step (K=2, the fake model, enough scenarios) and its rater accounts.

    Accounts are bulk-created with one password hash: hashing hundreds of passwords one by one would take
    minutes of PBKDF2, and the simulated raters log in with the right password anyway."""
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    from annotate.models import Scenario, Study

    config = fake_model_config(name=CONFIG_NAME, bench="bench/load.py", base_url=spec["base_url"], words=spec["words"])
    study_fields = {f.name for f in Study._meta.get_fields()}
    users = get_user_model()
    hashed = make_password(spec["password"])
    studies = []
    for index, raters in enumerate(spec["steps"]):
        extra = {"max_queued_turns": spec["max_queued_turns"]} if "max_queued_turns" in study_fields else {}
        study = Study.objects.create(
            name=f"load bench {spec['run']} step {index + 1} ({raters} raters)",
            slug=f"load-{spec['run']}-{index + 1}",
            candidates_per_turn=2,
            max_user_turns=spec["turns"],
            overlap=min(raters, 32000),  # every rater may get every scenario: scenarios never run out
            **extra,
        )
        study.model_pool.set([config])
        Scenario.objects.bulk_create(
            Scenario(study=study, external_id=f"s{i}", title=f"Load scenario {i}", brief="Ask for help with a plan.")
            for i in range(spec["scenarios"])
        )
        prefix = f"load-{spec['run']}-{index + 1}-"
        names = [f"{prefix}{i}" for i in range(raters)] + [f"{prefix}probe"]  # the probe: --faults' web check
        users.objects.bulk_create(users(username=name, password=hashed) for name in names)
        studies.append({"raters": raters, "slug": study.slug, "prefix": prefix})
    return {"studies": studies}


# --- processes -------------------------------------------------------------------------------------


def _tree(root: Any) -> list[Any]:
    import psutil

    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def tree_rss(roots: list[Any]) -> int:
    import psutil

    total = 0
    for root in roots:
        for proc in _tree(root):
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
    return total


def tree_cpu(roots: list[Any]) -> float:
    import psutil

    total = 0.0
    for root in roots:
        for proc in _tree(root):
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
    return total


class Stack:
    """The web tier and the workers, through `manage.py serve` or started directly; `roles()` finds the root
    process of each role (web, generation workers, side worker) for RSS and CPU.

    `serve` is changing (issue 11): its `--help` is read here, not assumed. When it has `--io-concurrency`
    (a threads worker of its own for model servers, where `openai` replies go), the bench's `--concurrency`
    and `--pool` are that worker's and the local-model worker gets one slot (the bench has no local model);
    without it, they are the generation worker's. Started directly, one threads worker takes every
    `generation*` queue of `workers.celery_app.QUEUES` and a second one the rest, with beat."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str], log_dir: Path, port: int) -> None:
        self.children: list[Child] = []
        self.port = port
        self.restart_generation: Any = None
        mode = args.stack
        help_text = serve_help(env) if mode != "direct" else ""
        missing = [flag for flag in SERVE_FLAGS if flag not in help_text]
        if mode == "auto":
            mode = "serve" if not missing else "direct"
            if missing:
                print(f"  serve --help lacks {', '.join(missing)}: starting uvicorn and the workers directly")
        self.mode = mode
        py = sys.executable
        if mode == "serve":
            if "--io-concurrency" in help_text:
                workers = ["--io-concurrency", str(args.concurrency), "--concurrency", "1"]
                self.workers_expected = 3
            else:
                workers = ["--concurrency", str(args.concurrency), "--pool", args.pool]
                self.workers_expected = 2
            argv = [py, "manage.py", "serve", "--host", "127.0.0.1", "--port", str(port),
                    "--web-workers", str(args.web_workers), *workers, "--side-concurrency", str(args.side_concurrency),
                    *(["--force"] if args.force else [])]  # fmt: skip
            print(f"  {' '.join(argv[1:])}")
            self.children.append(Child("serve", argv, env, log_dir))
            return
        queues = app_queues(env)
        generation = ",".join(q for q in queues if q.startswith("generation"))
        side = ",".join(q for q in queues if not q.startswith("generation"))
        worker = [py, "-m", "celery", "-A", "workers", "worker", "--loglevel", "INFO"]
        commands = {
            "web": [py, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
                    "--no-access-log", "--workers", str(args.web_workers), "--timeout-keep-alive", KEEPALIVE],
            "generation": [*worker, "-Q", generation, "-c", str(args.concurrency), "-n", "generation@%h",
                           *(["-P", args.pool] if args.pool else [])],
            "side": [*worker, "-Q", side, "-c", str(args.side_concurrency), "-n", "side@%h", "-B"],
        }  # fmt: skip
        workers_env = {**env, "DB_POOL": "0"}  # as serve runs them: one connection per task slot
        self.restart_generation = lambda: Child("generation", commands["generation"], workers_env, log_dir)
        for role, argv in commands.items():
            print(f"  {' '.join(argv[1:])}")
            self.children.append(Child(role, argv, env if role == "web" else workers_env, log_dir))
        self.workers_expected = 1

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/accounts/login/"
        while time.monotonic() < deadline:
            for child in self.children:
                if child.proc.poll() is not None:
                    raise RuntimeError(f"{child.name} exited with {child.proc.returncode}:\n{child.output()[-4000:]}")
            ready = all(
                child.output().count(" ready.") >= self.workers_expected
                for child in self.children
                if child.name in ("serve", "generation", "side")
            )
            if ready and _answers(url):
                return
            time.sleep(0.5)
        logs = "\n".join(f"--- {c.name}\n{c.output()[-3000:]}" for c in self.children)
        raise RuntimeError(f"the stack was not ready in {timeout:g} s:\n{logs}")

    def roles(self) -> dict[str, list[Any]]:
        """Root processes by role: web (uvicorn), worker (every worker of a generation* queue), side
        (suggestions/exports + beat)."""
        import psutil

        found: dict[str, list[Any]] = {"web": [], "worker": [], "side": []}
        try:
            if self.mode == "serve":
                candidates = psutil.Process(self.children[0].proc.pid).children()
            else:
                candidates = [psutil.Process(c.proc.pid) for c in self.children if c.proc.poll() is None]
        except psutil.Error:
            return found
        for proc in candidates:
            try:
                cmd = proc.cmdline()
            except psutil.Error:
                continue
            if any("uvicorn" in part for part in cmd):
                found["web"].append(proc)
            elif "celery" in " ".join(cmd):
                queues = cmd[cmd.index("-Q") + 1].split(",") if "-Q" in cmd[:-1] else []
                found["worker" if any(q.startswith("generation") for q in queues) else "side"].append(proc)
        return found

    def kill_generation_worker(self) -> None:
        """SIGKILL the generation worker's whole process group (a lost worker node): direct mode only, since
        `serve` stops every process when one of its children exits."""
        child = next(c for c in self.children if c.name == "generation")
        os.killpg(child.proc.pid, signal.SIGKILL)
        child.proc.wait()
        child.log.close()
        self.children.remove(child)

    def start_generation_worker(self, timeout: float = 120) -> None:
        child = self.restart_generation()
        self.children.append(child)
        child.wait_for(" ready.", timeout=timeout)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


def serve_help(env: dict[str, str]) -> str:
    """`manage.py serve --help`: the flags serve has today."""
    out = subprocess.run(
        [sys.executable, "manage.py", "serve", "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    return out.stdout


def app_queues(env: dict[str, str]) -> list[str]:
    """The app's Celery queues (`workers.celery_app.QUEUES`), read in a subprocess: this one never imports Django."""
    code = "from workers.celery_app import QUEUES; print(','.join(QUEUES))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1].split(",")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


# --- measurements during a step -----------------------------------------------------------------------


@dataclass
class Sample:
    t: float  # epoch seconds
    pg: int  # connections to the bench database (-1: PostgreSQL did not answer)
    queue: int  # LLEN of the generation queue (-1: Redis did not answer)
    rss: dict[str, int]  # bytes, by role
    cpu: dict[str, float]  # CPU seconds used so far, by role


class Monitor(threading.Thread):
    """Samples every POLL_SECONDS: PostgreSQL connections to the bench database, the generation queue's depth,
    and the RSS and CPU time of the web and worker process trees. The step's figures are taken over the
    locust measurement window afterwards (`window`)."""

    def __init__(self, database_url: str, broker_url: str, stack: Stack) -> None:
        super().__init__(daemon=True, name="load-monitor")
        self.database_url, self.broker_url, self.stack = database_url, broker_url, stack
        self.stop_event = threading.Event()
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self.extra: dict[str, list[Any]] = {}  # more roles to sample (the locust client)

    def run(self) -> None:
        import psycopg
        import redis

        db = urlparse(self.database_url)
        name = db.path.lstrip("/")
        # Polled from the maintenance database, so the poll's own connection is not counted.
        maintenance = db._replace(path="/postgres").geturl().replace("postgres://", "postgresql://", 1)
        client = redis.Redis.from_url(self.broker_url, socket_timeout=2)
        conn = None
        try:
            while not self.stop_event.is_set():
                pg = queue = -1
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(maintenance, autocommit=True, connect_timeout=2)
                    row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [name]).fetchone()
                    pg = int(row[0]) if row else 0
                except Exception as exc:  # PostgreSQL refusing connections is itself a finding: note it, go on
                    self.errors.append(f"pg: {exc}")
                    conn = None
                try:
                    queue = sum(int(client.llen(name)) for name in GENERATION_QUEUES)
                except Exception as exc:
                    self.errors.append(f"redis: {exc}")
                roles = {**self.stack.roles(), **self.extra}
                self.samples.append(
                    Sample(
                        t=time.time(),
                        pg=pg,
                        queue=queue,
                        rss={role: tree_rss(roots) for role, roots in roles.items()},
                        cpu={role: tree_cpu(roots) for role, roots in roles.items()},
                    )
                )
                self.stop_event.wait(POLL_SECONDS)
        finally:
            if conn is not None:
                conn.close()
            client.close()

    def window(self, start: float, end: float) -> list[Sample]:
        inside = [s for s in self.samples if start <= s.t <= end]
        return inside or self.samples


@dataclass
class Row:
    raters: int
    duration_s: float  # the measurement window
    requests: int  # HTTP requests answered 2xx/3xx in the window
    rps: float
    percentiles_ms: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> p50/p95/p99/count
    errors_5xx: dict[str, int] = field(default_factory=dict)  # whole step, logins included
    failures: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    error_examples: dict[str, str] = field(default_factory=dict)
    pg_connections_max: int = 0  # in the window
    pg_connections_max_step: int = 0  # the whole step, logins included
    queue_max: int = 0
    rss_mb_max: dict[str, float] = field(default_factory=dict)
    cpu_s_per_s: dict[str, float] = field(default_factory=dict)
    turns: dict[str, int] = field(default_factory=dict)  # the step's assistant turns by status after the drain
    stuck: int = 0
    comparisons: int = 0
    conversations_completed: int = 0
    login_s: float = 0.0  # from the step's start until the window opened (logins, then the stagger)
    drain_s: float = 0.0
    loadavg: tuple[float, float] = (0.0, 0.0)
    monitor_errors: int = 0
    faults: dict[str, Any] | None = None  # --faults: the checks (Faults.report)
    client_cpu_warning: bool = False  # locust warned that its own CPU was saturated: the figures are the client's

    @property
    def errors(self) -> int:
        return sum(self.errors_5xx.values()) + sum(self.failures.values())

    def p(self, kind: str, q: str) -> float:
        return self.percentiles_ms.get(kind, {}).get(q, float("nan"))


def step_counts(database_url: str, slug: str) -> tuple[dict[str, int], int, int]:
    """The step study's assistant turns by status, its comparisons, and its completed conversations."""
    import psycopg

    url = database_url.replace("postgres://", "postgresql://", 1)
    joins = "JOIN annotate_conversation c ON c.id = x.conversation_id JOIN annotate_study s ON s.id = c.study_id"
    with psycopg.connect(url, autocommit=True) as conn:
        turns = conn.execute(
            f"SELECT x.status, count(*) FROM annotate_turn x {joins} WHERE s.slug = %s AND x.role = 'assistant' "
            "GROUP BY 1",
            [slug],
        ).fetchall()
        comparisons = conn.execute(f"SELECT count(*) FROM annotate_comparison x {joins} WHERE s.slug = %s", [slug])
        votes = comparisons.fetchone()
        completed = conn.execute(
            "SELECT count(*) FROM annotate_conversation c JOIN annotate_study s ON s.id = c.study_id "
            "WHERE s.slug = %s AND c.status = 'completed'",
            [slug],
        ).fetchone()
    return {str(k): int(v) for k, v in turns}, int(votes[0] if votes else 0), int(completed[0] if completed else 0)


def drain(args: argparse.Namespace, slug: str) -> tuple[float, dict[str, int]]:
    """Wait until the step's turns are all finished (or --drain-timeout), so the next step starts clean."""
    began = time.monotonic()
    while True:
        turns, _, _ = step_counts(args.database_url, slug)
        unfinished = turns.get("pending", 0) + turns.get("streaming", 0)
        if not unfinished or time.monotonic() - began >= args.drain_timeout:
            return time.monotonic() - began, turns
        time.sleep(1.0)


# The direct stack's web server keeps idle connections as `serve` does (settings.WEB_KEEPALIVE_SECONDS, same variable
# and default; this script never imports Django).
KEEPALIVE = os.environ.get("WEB_KEEPALIVE_SECONDS", "75")
LOGIN_TIMEOUT = 600  # seconds the raters of a step may take to log in before the window opens anyway


def run_step(
    args: argparse.Namespace,
    stack: Stack,
    study: dict[str, Any],
    base_url: str,
    log_dir: Path,
    env: dict[str, str],
    cluster: PrivateCluster | None = None,
) -> Row:
    import psutil

    raters = study["raters"]
    name = study["slug"]  # the step's files in log_dir
    window_file = log_dir / f"{name}-window.json"
    faults = Faults(stack, cluster, window_file, base_url, f"{study['prefix']}probe") if cluster else None
    spawn_rate = args.spawn_rate or max(raters / 10.0, 1.0)
    result = log_dir / f"{name}-summary.json"
    locust_env = {
        **env,
        "LOAD_STUDY": study["slug"],
        "LOAD_USER_PREFIX": study["prefix"],
        "LOAD_USERS": str(raters),
        "LOAD_PASSWORD": PASSWORD,
        "LOAD_TURNS": str(args.turns),
        "LOAD_THINK_MIN": str(args.think_range[0]),
        "LOAD_THINK_MAX": str(args.think_range[1]),
        "LOAD_DURATION": str(args.duration),
        "LOAD_LOGIN_TIMEOUT": str(LOGIN_TIMEOUT),
        "LOAD_RESULT": str(result),
        "LOAD_WINDOW_FILE": str(window_file),
    }
    # The locustfile stops the run when its window closes; -t only caps a run that hangs.
    cap = LOGIN_TIMEOUT + args.think_range[1] + args.duration + 60
    argv = [
        sys.executable, "-m", "locust", "-f", str(ROOT / "bench" / "locustfile.py"), "--headless",
        "-u", str(raters), "-r", f"{spawn_rate:g}", "-t", f"{cap:.0f}s", "--stop-timeout", "0", "--host", base_url,
        "--csv", str(log_dir / name), "--only-summary", "--loglevel", "WARNING",
    ]  # fmt: skip
    monitor = Monitor(args.database_url, args.broker_url, stack)
    began = time.time()
    log_path = log_dir / f"{name}-locust.log"
    with open(log_path, "wb") as log:
        client = subprocess.Popen(argv, cwd=ROOT, env=locust_env, stdout=log, stderr=subprocess.STDOUT)
        monitor.extra["locust"] = [psutil.Process(client.pid)]  # the client's CPU: is it the bottleneck?
        monitor.start()
        if faults is not None:
            faults.start()
        try:
            client.wait(timeout=cap + 120)
        finally:
            if client.poll() is None:
                client.kill()
                client.wait()
    monitor.stop_event.set()
    monitor.join()
    if faults is not None:
        faults.join(timeout=300)
    if not result.exists():
        raise RuntimeError(f"locust wrote no summary; see {log_path}")
    summary = json.loads(result.read_text())
    start = float(summary["window"].get("start", began))
    end = min(float(summary["window"].get("end", time.time())), time.time())
    inside = monitor.window(start, end)
    span = max(inside[-1].t - inside[0].t, 1e-9)
    drain_s, turns = drain(args, study["slug"])
    _, comparisons, completed = step_counts(args.database_url, study["slug"])
    times: dict[str, list[float]] = summary["times_ms"]
    requests = sum(len(v) for k, v in times.items() if k not in EVENTS and k not in ("login", "login page"))
    return Row(
        raters=raters,
        duration_s=round(end - start, 1),
        requests=requests,
        rps=requests / max(end - start, 1e-9),
        percentiles_ms={
            kind: {
                "p50": percentile(values, 50),
                "p95": percentile(values, 95),
                "p99": percentile(values, 99),
                "count": len(values),
            }
            for kind, values in sorted(times.items())
        },
        errors_5xx=summary["errors_5xx"],
        failures=summary["failures"],
        refused=summary["refused"],
        error_examples=summary["examples"],
        pg_connections_max=max(s.pg for s in inside),
        pg_connections_max_step=max((s.pg for s in monitor.samples), default=-1),
        queue_max=max(s.queue for s in inside),
        rss_mb_max={role: round(max(s.rss.get(role, 0) for s in inside) / 2**20, 1) for role in inside[-1].rss},
        cpu_s_per_s={
            role: round((inside[-1].cpu[role] - inside[0].cpu.get(role, 0)) / span, 3) for role in inside[-1].cpu
        },
        turns=turns,
        stuck=turns.get("pending", 0) + turns.get("streaming", 0),
        comparisons=comparisons,
        conversations_completed=completed,
        login_s=round(start - began, 1),
        drain_s=round(drain_s, 1),
        loadavg=(round(os.getloadavg()[0], 2), round(os.getloadavg()[1], 2)),
        monitor_errors=len(monitor.errors),
        client_cpu_warning="CPU usage above" in log_path.read_text(errors="replace"),
        faults=faults.report(args.database_url, study["slug"], summary, turns) if faults is not None else None,
    )


# --- faults (--faults) ---------------------------------------------------------------------------------


class PrivateCluster:
    """A PostgreSQL cluster of the bench's own (initdb into a temporary directory, a spare port), so that
    restarting it mid-run touches no one else's database. PostgreSQL refuses to run as root: as root, initdb
    and pg_ctl run as the `postgres` user, in a directory that user owns."""

    def __init__(self, port: int, max_connections: int) -> None:
        import glob

        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
        self.bin = Path(bins[-1]) if bins else Path(shutil.which("initdb") or "initdb").parent
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="load-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            shutil.chown(self.dir, "postgres", "postgres")
        self.options = f"-p {port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections={max_connections}"
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/cg_bench_faults"

    def _run(self, tool: str, *args: str) -> None:
        """Run a PostgreSQL tool, its output in a file: a pipe would be inherited by the server pg_ctl starts,
        and waiting for the pipe to close would wait for the server to stop."""
        with tempfile.TemporaryFile() as out:
            argv = [*self.as_user, str(self.bin / tool), *args]
            if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode != 0:
                out.seek(0)
                raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{out.read().decode(errors='replace')[-3000:]}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", self.options, "-w", "start")

    def restart(self) -> None:
        """A fast restart (active connections are cut), as after a crash or a failover."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-m", "fast", "-w", "restart")

    def remove(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


class Probe(threading.Thread):
    """A logged-in rater's home page, fetched every 0.25 s: when the web tier answers 200 again after the
    database came back."""

    def __init__(self, base_url: str, username: str) -> None:
        super().__init__(daemon=True, name="load-probe")
        self.base_url, self.username = base_url, username
        self.stop_event = threading.Event()
        self.answers: list[tuple[float, int]] = []

    def run(self) -> None:
        import requests

        http = requests.Session()
        http.get(f"{self.base_url}/accounts/login/", timeout=10)
        form = {"username": self.username, "password": PASSWORD, "csrfmiddlewaretoken": http.cookies["csrftoken"]}
        http.post(f"{self.base_url}/accounts/login/", data=form, allow_redirects=False, timeout=30)
        while not self.stop_event.is_set():
            try:
                status = http.get(f"{self.base_url}/", timeout=5, allow_redirects=False).status_code
            except requests.RequestException:
                status = 0
            self.answers.append((time.time(), status))
            self.stop_event.wait(0.25)

    def recovered_after(self, since: float) -> float | None:
        """Seconds from `since` to the first 200 after the last failure past `since`; None if it never did."""
        failures = [t for t, status in self.answers if t >= since and status != 200]
        last = max(failures, default=since)
        ok = [t for t, status in self.answers if t > last and status == 200]
        return ok[0] - since if ok else None


class Faults(threading.Thread):
    """The issue's faults, timed from the window's opening: SIGKILL the generation worker at 25% of the window
    and start it again 5 s later; restart PostgreSQL (fast) at 55%."""

    def __init__(self, stack: Stack, cluster: PrivateCluster, window_file: Path, base_url: str, probe_user: str):
        super().__init__(daemon=True, name="load-faults")
        self.stack, self.cluster, self.window_file = stack, cluster, window_file
        self.probe = Probe(base_url, probe_user)
        self.events: dict[str, float] = {}
        self.errors: list[str] = []

    def _at(self, when: float) -> None:
        time.sleep(max(when - time.time(), 0))

    def run(self) -> None:
        try:
            deadline = time.time() + LOGIN_TIMEOUT + 120
            while not self.window_file.exists() and time.time() < deadline:
                time.sleep(0.2)
            window = json.loads(self.window_file.read_text())
            start, end = float(window["start"]), float(window["end"])
            self.probe.start()
            self._at(start + 0.25 * (end - start))
            self.events["worker_killed"] = time.time()
            self.stack.kill_generation_worker()
            time.sleep(5)
            self.events["worker_restarting"] = time.time()
            self.stack.start_generation_worker()
            self.events["worker_ready"] = time.time()
            self._at(start + 0.55 * (end - start))
            self.events["postgres_restarting"] = time.time()
            self.cluster.restart()
            self.events["postgres_back"] = time.time()
            self._at(end)
        except Exception as exc:  # reported with the step; the run goes on
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.probe.stop_event.set()

    def report(self, database_url: str, slug: str, summary: dict[str, Any], turns: dict[str, int]) -> dict[str, Any]:
        """The issue's checks: votes acknowledged are stored once, none stored unacknowledged, no turn stuck, the
        web tier back within 10 s of the database."""
        import psycopg

        url = database_url.replace("postgres://", "postgresql://", 1)
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT x.idempotency_key::text FROM annotate_comparison x JOIN annotate_conversation c "
                "ON c.id = x.conversation_id JOIN annotate_study s ON s.id = c.study_id WHERE s.slug = %s",
                [slug],
            ).fetchall()
        stored = [str(r[0]) for r in rows]
        acked = set(summary.get("votes_acknowledged", []))
        in_flight = set(summary.get("votes_in_flight", []))  # cut off when the run stopped: may or may not be stored
        back = self.events.get("postgres_back")
        recovery = self.probe.recovered_after(back) if back else None
        return {
            "events": {k: round(v, 3) for k, v in self.events.items()},
            "postgres_restart_s": round(back - self.events["postgres_restarting"], 2) if back else None,
            "votes_acknowledged": len(acked),
            "votes_stored": len(stored),
            "votes_stored_twice": len(stored) - len(set(stored)),
            "acknowledged_not_stored": len(acked - set(stored)),
            "stored_not_acknowledged": len(set(stored) - acked - in_flight),
            "votes_in_flight_at_stop": len(in_flight),
            "turns_after_drain": turns,
            "turns_stuck": turns.get("pending", 0) + turns.get("streaming", 0),
            "web_recovery_s": None if recovery is None else round(recovery, 2),
            "probe_failures": sum(1 for _, status in self.probe.answers if status != 200),
            "fault_errors": self.errors,
        }


def print_faults(report: dict[str, Any]) -> None:
    ok = (
        report["acknowledged_not_stored"] == 0
        and report["stored_not_acknowledged"] == 0
        and report["votes_stored_twice"] == 0
        and report["turns_stuck"] == 0
        and report["web_recovery_s"] is not None
        and report["web_recovery_s"] <= 10
        and not report["fault_errors"]
    )
    print(f"  faults: {'all checks passed' if ok else 'CHECKS FAILED'}")
    for key, value in report.items():
        print(f"    {key}: {value}")


# --- report --------------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:,.0f}"  # NaN: no such request in the step


def _triple(row: Row, kind: str) -> str:
    return " / ".join(_ms(row.p(kind, q)) for q in ("p50", "p95", "p99"))


def _first_token(row: Row) -> str:
    value = row.p("first token", "p50")
    return "-" if value != value else f"{value / 1000:.2f}"


HEADER = (
    "raters",
    "req/s",
    "vote p50/p95/p99 ms",
    "tag p50/p95/p99 ms",
    "message p50/p95/p99 ms",
    "first token p50 s",
    "errors",
    "refused (graceful)",
    "PG conn max",
    "web RSS MB",
    "worker RSS MB (gen + side)",
    "queue max",
    "stuck turns",
)


def cells(row: Row) -> list[str]:
    return [
        str(row.raters),
        f"{row.rps:.1f}",
        _triple(row, "vote"),
        _triple(row, "tag"),
        _triple(row, "message"),
        _first_token(row),
        str(row.errors),
        str(sum(row.refused.values())),
        str(row.pg_connections_max),
        f"{row.rss_mb_max.get('web', 0):.0f}",
        f"{row.rss_mb_max.get('worker', 0):.0f} + {row.rss_mb_max.get('side', 0):.0f}",
        str(row.queue_max),
        str(row.stuck),
    ]


def print_row(row: Row) -> None:
    widths = [max(len(h), 8) for h in HEADER]
    print("  " + "  ".join(c.rjust(w) for c, w in zip(cells(row), widths, strict=True)), flush=True)
    details = [
        f"window {row.duration_s:g} s after {row.login_s:g} s of logins and stagger (login p50 "
        f"{_ms(row.p('login', 'p50'))} ms)",
        f"{row.comparisons} votes stored, {row.conversations_completed} conversations completed",
        f"turns after {row.drain_s:g} s drain: {row.turns}",
        f"CPU s/s {row.cpu_s_per_s}",
        f"load average (1, 5 min) {row.loadavg[0]:.2f}, {row.loadavg[1]:.2f}",
    ]
    print("    " + "; ".join(details))
    if row.client_cpu_warning:
        print("    WARNING: the locust client ran out of CPU; latencies include the client's own queueing")
    for kind, message in row.error_examples.items():
        print(f"    first {kind} error: {message}")
    if row.faults is not None:
        print_faults(row.faults)


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells(row)) + " |" for row in rows]
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.setup:
        print(json.dumps(setup(json.loads(args.setup))))
        return 0
    if not args.faults:
        return run(args, None)
    cluster = PrivateCluster(free_port(), args.max_connections)
    try:
        cluster.start()
        args.database_url = cluster.url
        print(f"private PostgreSQL cluster in {cluster.dir} (port {cluster.port}, max_connections "
              f"{args.max_connections})", flush=True)  # fmt: skip
        return run(args, cluster)
    finally:
        cluster.remove()


def run(args: argparse.Namespace, cluster: PrivateCluster | None) -> int:
    """Set up, start the stack, run every step, report; stop everything whatever happens."""
    refuse_shared(args.database_url, args.broker_url, example_broker=DEFAULT_BROKER_URL)
    ensure_database(args.database_url)
    flush_broker(args.broker_url)
    log_dir = Path(tempfile.mkdtemp(prefix="load-"))
    env = dict(os.environ)
    env.update(
        DATABASE_URL=args.database_url,
        CELERY_BROKER_URL=args.broker_url,
        CACHE_URL=args.broker_url,  # rate limits: one count across web processes, as production needs
        DJANGO_SETTINGS_MODULE="config.settings",
        PYTHONUNBUFFERED="1",
        DEBUG="0",
    )
    env.pop("REDIS_URL", None)
    env.pop("STREAM_REDIS_URL", None)  # the feed follows the bench's broker
    print(f"load bench: logs in {log_dir}", flush=True)
    started = time.monotonic()
    children: list[Child] = []
    stack: Stack | None = None
    completed = False
    rows: list[Row] = []
    try:
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        fake = Child(
            "fake_openai",
            [sys.executable, str(ROOT / "bench" / "fake_openai.py"), "--port", "0",
             "--words", str(args.words), "--interval", str(args.interval)],
            env,
            log_dir,
        )  # fmt: skip
        children.append(fake)
        fake.wait_for("listening on", timeout=30)
        found = re.search(r"listening on (http://\S+)", fake.output())
        base_model_url = found.group(1) if found else ""
        run = time.strftime("%m%d%H%M%S") + uuid.uuid4().hex[:3]
        spec = {
            "run": run,
            "base_url": base_model_url,
            "words": args.words,
            "turns": args.turns,
            "password": PASSWORD,
            "steps": args.steps,
            "max_queued_turns": args.max_queued_turns,
            "scenarios": 20,
        }
        out = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--setup", json.dumps(spec)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"set-up failed:\n{out.stderr[-4000:]}")
        studies = json.loads(out.stdout.strip().splitlines()[-1])["studies"]
        port = free_port()
        print("starting the stack:", flush=True)
        stack = Stack(args, env, log_dir, port)
        stack.wait_ready()
        base_url = f"http://127.0.0.1:{port}"
        print(
            f"ready in {time.monotonic() - started:.0f} s; {len(args.steps)} steps x {args.duration} s, "
            f"K=2, {args.turns} messages per conversation, think {args.think_range[0]:g}-{args.think_range[1]:g} s, "
            f"fake model {args.words} words x {args.interval * 1000:.0f} ms",
            flush=True,
        )
        print("  " + "  ".join(h.rjust(max(len(h), 8)) for h in HEADER))
        for study in studies:
            row = run_step(args, stack, study, base_url, log_dir, env, cluster)
            rows.append(row)
            print_row(row)
        print()
        print(markdown(rows))
        print(f"\n(total {time.monotonic() - started:.0f} s)")
        if args.json:
            payload = {"args": {k: v for k, v in vars(args).items() if k != "json"}, "rows": [asdict(r) for r in rows]}
            args.json.write_text(json.dumps(payload, indent=2, default=str))
        completed = True
        return 0
    finally:
        if stack is not None:
            stack.stop()
        stack_stop(children, args.broker_url, log_dir, keep_logs=args.keep_logs or not completed)


if __name__ == "__main__":
    sys.exit(main())
