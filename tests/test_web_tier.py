"""The web tier's database connections (issue 11, item 3): a pool per process on PostgreSQL, read from the
environment (off on SQLite), and a request that gets no connection is a 503 with Retry-After, never a 500."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest
from django.conf import settings
from django.db import OperationalError, connection
from django.db.utils import ConnectionHandler
from django.test import RequestFactory

from core.db import database_unavailable
from core.middleware import RETRY_AFTER_SECONDS, DatabaseUnavailableMiddleware
from tests.helpers import HTMX, child_env
from tests.processes import ROOT, ChildProcess, free_port

PG = "postgres://postgres@127.0.0.1:5432/commonground"


def settings_in_child(**env: str) -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh interpreter with `env` on top of a clean base (no DB_* of ours)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DB_") and k != "DATABASE_URL"}
    code = (
        "import json, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'config.settings'\n"
        "from django.conf import settings\n"
        "print(json.dumps(settings.DATABASES['default'], default=str))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def database_settings(**env: str) -> dict[str, Any]:
    done = settings_in_child(**env)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_postgresql_gets_a_pool_sized_from_the_environment():
    default = database_settings(DATABASE_URL=PG)
    assert default["OPTIONS"]["pool"] == {"min_size": 1, "max_size": 4, "timeout": 10.0}
    assert default["CONN_MAX_AGE"] == 0 and default["CONN_HEALTH_CHECKS"] is True

    sized = database_settings(DATABASE_URL=PG, DB_POOL_MIN_SIZE="2", DB_POOL_MAX_SIZE="9", DB_POOL_TIMEOUT="2.5")
    assert sized["OPTIONS"]["pool"] == {"min_size": 2, "max_size": 9, "timeout": 2.5}


def test_the_pool_can_be_turned_off_and_sqlite_never_has_one(tmp_path):
    off = database_settings(DATABASE_URL=PG, DB_POOL="0", DB_CONN_MAX_AGE="60")
    assert "pool" not in off.get("OPTIONS", {}) and off["CONN_MAX_AGE"] == 60
    sqlite = database_settings(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", DB_POOL_MAX_SIZE="9")
    assert "pool" not in sqlite["OPTIONS"] and sqlite["OPTIONS"]["transaction_mode"] == "IMMEDIATE"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DB_CONN_MAX_AGE": "60"}, "DB_POOL=0"),
        ({"DB_POOL_MAX_SIZE": "0"}, "DB_POOL_MAX_SIZE >= 1"),
        ({"DB_POOL_MIN_SIZE": "5", "DB_POOL_MAX_SIZE": "4"}, "DB_POOL_MIN_SIZE <= DB_POOL_MAX_SIZE"),
        ({"DB_POOL_TIMEOUT": "soon"}, "DB_POOL_TIMEOUT must be a number"),
    ],
)
def test_a_bad_pool_setting_stops_start_up_with_a_message(env, message):
    done = settings_in_child(DATABASE_URL=PG, **env)
    assert done.returncode != 0 and "ImproperlyConfigured" in done.stderr and message in done.stderr


# --- no connection: 503 -------------------------------------------------------------------------


def _pool_of_one() -> ConnectionHandler:
    """Django connections to the test database through a pool of one connection that waits 0.2 s."""
    db = {**settings.DATABASES["default"]}
    db["OPTIONS"] = {**db.get("OPTIONS", {}), "pool": {"min_size": 0, "max_size": 1, "timeout": 0.2}}
    db["CONN_MAX_AGE"] = 0
    # An alias of its own: pools are kept per alias, and "default" is the test's own pool.
    return ConnectionHandler({"default": {"ENGINE": "django.db.backends.dummy"}, "pool_test": db})


@pytest.mark.django_db
def test_an_exhausted_pool_is_a_503_with_retry_after_not_a_500():
    if connection.vendor != "postgresql":
        pytest.skip("the connection pool is PostgreSQL's")
    handler = _pool_of_one()
    holder = handler["pool_test"]
    holder.ensure_connection()  # the pool's one connection, held by this thread
    raised: list[BaseException] = []

    def another_request() -> None:
        try:
            handler["pool_test"].ensure_connection()  # another thread: another Django connection, same pool
        except BaseException as exc:  # noqa: BLE001 - kept for the asserts below
            raised.append(exc)

    try:
        thread = threading.Thread(target=another_request)
        thread.start()
        thread.join(10)
    finally:
        holder.close()
        holder.close_pool()
    # What Django raises when the pool has nothing to give: its OperationalError, from psycopg_pool's PoolTimeout
    [exc] = raised
    assert isinstance(exc, OperationalError) and type(exc.__cause__).__name__ == "PoolTimeout"
    assert database_unavailable(exc)

    middleware = DatabaseUnavailableMiddleware(lambda request: pytest.fail("not called"))
    page = middleware.process_exception(RequestFactory().get("/"), exc)
    assert page is not None and page.status_code == 503
    assert page["Retry-After"] == str(RETRY_AFTER_SECONDS)
    assert f"try again in {RETRY_AFTER_SECONDS} s" in page.content.decode()
    htmx_request = RequestFactory().post("/c/1/vote/", **HTMX)
    htmx_request.htmx = True  # type: ignore[attr-defined]
    fragment = middleware.process_exception(htmx_request, exc)
    assert fragment is not None and fragment.status_code == 503 and fragment["HX-Retarget"] == "#errors"


@pytest.mark.django_db
def test_a_failing_query_is_not_taken_for_a_busy_database():
    if connection.vendor != "postgresql":
        pytest.skip("SQLSTATEs are PostgreSQL's")
    with pytest.raises(OperationalError) as cancelled, connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 1")
        cursor.execute("SELECT pg_sleep(1)")
    assert not database_unavailable(cancelled.value)  # a cancelled statement stays an error (500), as a bug
    middleware = DatabaseUnavailableMiddleware(lambda request: pytest.fail("not called"))
    assert middleware.process_exception(RequestFactory().get("/"), cancelled.value) is None
    assert middleware.process_exception(RequestFactory().get("/"), ValueError("x")) is None


def test_the_web_server_answers_503_when_no_connection_comes(tmp_path):
    """The real server (uvicorn) with a pool that cannot get a connection (nothing listens at the database's
    address): a page that needs the database is a 503 with Retry-After after DB_POOL_TIMEOUT, not a 500."""
    port = free_port()
    nowhere = f"postgres://postgres@127.0.0.1:{free_port()}/nothing-here"
    argv = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
    env = child_env(DATABASE_URL=nowhere, DB_POOL="1", DB_POOL_TIMEOUT="0.5", DEBUG="0")
    server = ChildProcess("web", argv, env, tmp_path)
    try:
        server.wait_for("Application startup complete", timeout=60)
        # A signed-in rater's page: reading the session needs the database
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Cookie": "sessionid=abc123xyz"})
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(request, timeout=30)
        assert answer.value.code == 503, answer.value.read()[:2000]
        assert answer.value.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
        body = answer.value.read().decode()
        assert "try again in" in body and "Traceback" not in body
    finally:
        server.stop()


def test_a_forked_child_opens_a_pool_of_its_own():
    """Pools are per process: a child forked with its parent's pool (an export's writers, Celery's prefork
    pool) must never hand out the parent's connections (their sockets are the parent's)."""
    module = pytest.importorskip("django.db.backends.postgresql.base")
    pools = module.DatabaseWrapper._connection_pools
    sentinel = object()
    pools["forked-test"] = sentinel
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the hook has run (os.register_at_fork, core.apps)
        os.write(write, b"kept" if "forked-test" in pools else b"gone")
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    seen = os.read(read, 10)
    os.close(read)
    del pools["forked-test"]
    assert seen == b"gone"
