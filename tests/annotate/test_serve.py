"""`manage.py serve` (what `make run` ends with) starts the web processes and the two workers (generation;
suggestions and exports with beat), checks the database connections they may open first, and Ctrl-C stops them
all."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from django.conf import settings
from django.db import connection

from annotate.management.commands.serve import (
    RESERVE_CONNECTIONS,
    ConnectionBudget,
    budget_error,
    default_web_workers,
    process_commands,
    process_envs,
)
from tests.helpers import child_env
from tests.processes import ROOT, ChildProcess, free_port
from workers.celery_app import QUEUES, worker_argv


def test_serve_starts_web_and_workers_and_ctrl_c_stops_them_all(transactional_db, broker_url, tmp_path):
    port = free_port()
    argv = [sys.executable, "manage.py", "serve", "--port", str(port), "--concurrency", "1", "--web-workers", "2"]
    serve = ChildProcess("serve", argv, child_env(CELERY_BROKER_URL=broker_url), tmp_path)
    try:
        serve.wait_for("Common Ground is running", timeout=90)
        serve.wait_for("generation@", "side@", timeout=90)
        serve.wait_for("ready.", timeout=90)
        children = psutil.Process(serve.proc.pid).children(recursive=True)
        commands = [" ".join(c.cmdline()) for c in children]
        assert any("uvicorn" in c and "--workers 2" in c for c in commands)
        assert any("celery" in c and "-Q generation " in c for c in commands)
        assert any("celery" in c and "-Q suggestions,exports " in c and "-B" in c for c in commands)
        # Suggestions and exports yield the CPU to the web tier and generation
        nice = {" ".join(c.cmdline()): c.nice() for c in children}
        assert all(n == 10 for c, n in nice.items() if "-Q suggestions,exports " in c), nice
        assert all(n == 0 for c, n in nice.items() if "uvicorn" in c or "-Q generation " in c), nice
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=10) as response:
            assert response.status == 200

        serve.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the command

        assert serve.proc.wait(timeout=30) == 0
        gone, alive = psutil.wait_procs(children, timeout=20)
        assert not alive, f"still running after Ctrl-C: {[p.cmdline() for p in alive]}"
    finally:
        serve.stop()


def test_serve_runs_generation_model_server_and_suggestions_exports_workers_with_beat():
    commands = process_commands(
        host="0.0.0.0", port=8000, web_workers=3, concurrency=4, side_concurrency=1, io_concurrency=48, pool="threads"
    )
    assert list(commands) == ["web", "generation worker", "model-server worker", "suggestions/exports worker"]
    io = commands["model-server worker"]
    assert io[io.index("-Q") + 1] == "generation_io" and io[io.index("-P") + 1] == "threads"
    assert io[io.index("-c") + 1] == "48" and "-B" not in io
    web = commands["web"]
    assert web[web.index("--workers") + 1] == "3"
    generation, side = commands["generation worker"], commands["suggestions/exports worker"]
    assert generation[generation.index("-Q") + 1] == "generation"
    assert generation[generation.index("-c") + 1] == "4" and generation[generation.index("-P") + 1] == "threads"
    assert "-B" not in generation
    assert side[side.index("-Q") + 1] == "suggestions,exports"
    assert side[side.index("-c") + 1] == "1" and "-P" not in side and "-B" in side
    assert generation[generation.index("-n") + 1] != side[side.index("-n") + 1]
    assert list(process_commands(host="h", port=1, web_workers=1, concurrency=1, side_concurrency=1, worker=False)) == [
        "web"
    ]


def test_the_web_server_keeps_an_idle_connection_longer_than_a_rater_thinks(tmp_path):
    """uvicorn closes an idle keep-alive connection after 5 s unless told otherwise; a rater thinks 3-8 s between
    a vote and the next message, and a request sent just as the server closes its socket is lost (HTTP 0)."""
    port = free_port()
    web = process_commands(host="127.0.0.1", port=port, web_workers=1, concurrency=1, side_concurrency=1, worker=False)
    argv = web["web"]
    assert int(argv[argv.index("--timeout-keep-alive") + 1]) == settings.WEB_KEEPALIVE_SECONDS >= 60
    server = ChildProcess("web", argv, child_env(), tmp_path)
    try:
        server.wait_for("Application startup complete", timeout=60)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            for _ in range(2):  # one socket: the second request comes after longer than uvicorn's own 5 s
                sock.sendall(b"GET /favicon.ico HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                assert sock.recv(65536).startswith(b"HTTP/1.1 302")
                time.sleep(6)
    finally:
        server.stop()


def test_models_are_preloaded_in_the_generation_worker_only_and_workers_run_without_the_pool():
    envs = process_envs({"PATH": "/bin", "DB_POOL_MAX_SIZE": "6"}, preload="gemma")
    assert envs["generation worker"]["WORKER_PRELOAD_MODELS"] == "gemma"
    assert envs["suggestions/exports worker"]["WORKER_PRELOAD_MODELS"] == ""
    assert "WORKER_PRELOAD_MODELS" not in envs["web"] and "DB_POOL" not in envs["web"]
    assert envs["generation worker"]["DB_POOL"] == envs["suggestions/exports worker"]["DB_POOL"] == "0"
    # the model-server worker's threads share its pool (they give a connection back between row writes)
    assert "DB_POOL" not in envs["model-server worker"] and envs["model-server worker"]["WORKER_PRELOAD_MODELS"] == ""


def test_worker_argv_keeps_every_queue_by_default_and_refuses_unknown_ones():
    argv = worker_argv(concurrency=2)
    assert argv[argv.index("-Q") + 1] == ",".join(QUEUES) and "-P" not in argv and "-B" not in argv
    with pytest.raises(ValueError, match="queues must be some of"):
        worker_argv(concurrency=1, queues=("generation", "nope"))


def test_web_workers_default_to_the_cpu_count_unless_web_workers_is_set(monkeypatch):
    monkeypatch.delenv("WEB_WORKERS", raising=False)
    assert default_web_workers() == max(os.cpu_count() or 1, 1)
    monkeypatch.setenv("WEB_WORKERS", "7")
    assert default_web_workers() == 7
    monkeypatch.setenv("WEB_WORKERS", "0")
    assert default_web_workers() == 1


def test_the_connection_budget_adds_web_pools_workers_exports_and_a_reserve():
    budget = ConnectionBudget(
        web_processes=4, pool_max_size=5, generation_concurrency=8, side_concurrency=1, export_processes=4
    )
    assert budget.total == 4 * 5 + 8 + 1 * 4 + RESERVE_CONNECTIONS
    with_io = ConnectionBudget(web_processes=4, pool_max_size=5, generation_concurrency=8, io_worker=True)
    assert with_io.total == (4 + 1) * 5 + 8 + RESERVE_CONNECTIONS
    assert budget_error(budget, max_connections=100, reserved=3) == ""
    assert budget_error(budget, max_connections=budget.total + 3, reserved=3) == ""  # exactly full fits


def test_an_over_budget_set_up_names_the_numbers_to_lower():
    budget = ConnectionBudget(
        web_processes=16, pool_max_size=8, generation_concurrency=4, side_concurrency=2, export_processes=4
    )
    problem = budget_error(budget, max_connections=100, reserved=3)
    assert f"may open {budget.total} database connections; PostgreSQL takes 97" in problem
    assert "16 processes × DB_POOL_MAX_SIZE 8" in problem and "128" in problem
    for knob in ("--web-workers", "WEB_WORKERS", "DB_POOL_MAX_SIZE", "--concurrency", "EXPORT_PROCESSES", "--force"):
        assert knob in problem


def test_serve_refuses_to_start_over_the_servers_connection_budget(db, tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("the budget is PostgreSQL's max_connections")
    argv = [sys.executable, "manage.py", "serve", "--port", str(free_port()), "--web-workers", "500"]
    done = subprocess.run(argv, env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "database connections; PostgreSQL takes" in done.stderr and "Lower --web-workers" in done.stderr
    assert "Common Ground is running" not in done.stdout  # nothing was started
