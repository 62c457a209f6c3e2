"""Helpers shared by the bench/ scripts: own database and broker, child processes, percentiles.

The child processes (`Child`, `free_port`) are the tests' own, from tests/processes.py (standard
library only, so importable before Django is set up).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the scripts run as `python bench/x.py`: only bench/ is on the path
    sys.path.insert(0, str(ROOT))

# Django refuses to start without a key when DEBUG is off; the bench's servers and workers inherit this one.
os.environ.setdefault("SECRET_KEY", "bench-only-key-never-used-in-production-3c8e1f6a9d2b7e4c0a5f8d1b6e3c9a7f")

from tests.processes import ChildProcess as Child  # noqa: E402
from tests.processes import free_port  # noqa: E402

__all__ = ["ROOT", "Child", "ensure_database", "flush_broker", "free_port", "percentile", "refuse_shared"]

SHARED_DATABASES = {"commonground", "postgres", "template0", "template1"}  # and every test* database
SHARED_REDIS_DBS = {0, 1, 2}


def refuse_shared(database_url: str, broker_url: str, *, example_broker: str) -> None:
    """Exit unless both are the bench's own: a PostgreSQL database that is not shared (nor a test database)
    and a Redis db above the shared 0-2 (the bench flushes it)."""
    db = urlparse(database_url)
    if db.scheme not in {"postgres", "postgresql"}:
        sys.exit(f"--database-url must be a PostgreSQL URL, not {database_url!r}")
    name = db.path.lstrip("/")
    if not name or name in SHARED_DATABASES or name.startswith("test"):
        sys.exit(f"Refusing to run on database {name!r}: it is shared; use a database of the bench's own")
    broker = urlparse(broker_url)
    if broker.scheme not in {"redis", "rediss"}:
        sys.exit(f"--broker-url must be a Redis URL, not {broker_url!r}")
    redis_db = int(broker.path.lstrip("/") or 0)
    if redis_db in SHARED_REDIS_DBS:
        sys.exit(f"Refusing to flush Redis db {redis_db}: dbs 0-2 are shared; use e.g. {example_broker}")


def ensure_database(database_url: str) -> None:
    """CREATE DATABASE if missing (through the server's maintenance database)."""
    import psycopg
    from psycopg import sql

    db = urlparse(database_url)
    name = db.path.lstrip("/")
    maintenance = db._replace(path="/postgres").geturl().replace("postgres://", "postgresql://", 1)
    with psycopg.connect(maintenance, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            print(f"created database {name}")


def flush_broker(broker_url: str) -> None:
    import redis

    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    client.close()


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (q in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def fake_model_config(*, name: str, bench: str, base_url: str, words: int) -> object:
    """The `openai` ModelConfig pointing at bench/fake_openai.py (created or brought up to date). Call after
    `django.setup()`, in the set-up subprocess of a bench."""
    from workers.models import ModelConfig

    config, _ = ModelConfig.objects.update_or_create(
        name=name,
        defaults={
            "description": f"{bench}: bench/fake_openai.py, fixed token rate",
            "backend": ModelConfig.Backend.OPENAI,
            "base_url": base_url,
            "model_path": "fake",
            "system_prompt": "You are a helpful assistant.",
            "params": {"max_new_tokens": words},
            "enabled": True,
        },
    )
    return config


def stack_stop(children: list[Any], broker_url: str, log_dir: Path, *, keep_logs: bool) -> None:
    """A bench's end: stop its processes (last started first), empty its Redis db, and keep the logs when asked
    or when the run did not complete (their path printed), else remove them."""
    for child in reversed(children):
        child.stop()
    flush_broker(broker_url)
    if keep_logs:
        print(f"logs: {log_dir}")
    else:
        shutil.rmtree(log_dir, ignore_errors=True)
