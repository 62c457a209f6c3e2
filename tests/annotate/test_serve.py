"""`manage.py serve` (what `make run` ends with) starts web + worker, and Ctrl-C stops both."""

from __future__ import annotations

import signal
import sys
import urllib.request

import psutil

from tests.helpers import child_env
from tests.processes import ChildProcess, free_port


def test_serve_starts_web_and_worker_and_ctrl_c_stops_both(transactional_db, broker_url, tmp_path):
    port = free_port()
    argv = [sys.executable, "manage.py", "serve", "--port", str(port), "--concurrency", "1"]
    serve = ChildProcess("serve", argv, child_env(CELERY_BROKER_URL=broker_url), tmp_path)
    try:
        serve.wait_for("Common Ground is running", timeout=90)
        serve.wait_for("ready.", timeout=90)
        children = psutil.Process(serve.proc.pid).children(recursive=True)
        commands = " ".join(" ".join(c.cmdline()) for c in children)
        assert "uvicorn" in commands and "celery" in commands
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/accounts/login/", timeout=10) as response:
            assert response.status == 200

        serve.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends to the command

        assert serve.proc.wait(timeout=30) == 0
        gone, alive = psutil.wait_procs(children, timeout=20)
        assert not alive, f"still running after Ctrl-C: {[p.cmdline() for p in alive]}"
    finally:
        serve.stop()
