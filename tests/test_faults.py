"""Faults under load (issue 11), on a PostgreSQL cluster of the test's own (tests/faults.py): raters keep
messaging and voting through the real web server while a whole worker node is SIGKILLed and replaced, the
database restarts, or its connections run out. Afterwards nothing acknowledged is lost or doubled, nothing
unacknowledged was stored, no reply is left stuck, and the web tier came back by itself.

The raters are threads speaking HTTP like htmx does; each resends a message or vote with the same key until it
gets a 2xx (a 5xx during the fault is allowed: what is promised is about what was acknowledged)."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
import requests

from tests.faults import PrivatePostgres
from tests.helpers import child_env
from tests.processes import ChildProcess, free_port, wait_until
from workers.celery_app import worker_argv

SLUG = "faults"
PASSWORD = "faults-test-pw-1"
RATERS = 8
LEASE = 5  # seconds: a lost worker's reply is taken up within this and one sweep
HX = {"HX-Request": "true"}
SETUP = """
from django.contrib.auth.models import User
from annotate.models import Scenario, Study
from workers.models import ModelConfig
config = ModelConfig.objects.create(name="tiny", backend="transformers", model_path={model!r}, prompt_format="plain",
                                    params={{"max_new_tokens": 40, "min_new_tokens": 40}})
study = Study.objects.create(name="Faults", slug={slug!r}, candidates_per_turn=2, max_user_turns=200, overlap=50)
study.model_pool.set([config])
for i in range(3):
    Scenario.objects.create(study=study, external_id=f"sc-{{i}}", title=f"Scenario {{i}}", brief="Talk.",
                            hidden_intent="None.")
for i in range({raters}):
    User.objects.create_user(f"rater{{i}}", password={password!r})
"""


@dataclass
class Ledger:
    """What the raters were told was stored (2xx), and what they tried."""

    messages: set[str] = field(default_factory=set)
    votes: set[str] = field(default_factory=set)
    tried_votes: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Rater(threading.Thread):
    """Log in, start a conversation, then: message, wait for both replies, vote for A; again and again."""

    def __init__(self, base: str, name: str, ledger: Ledger, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.base, self.name_, self.ledger, self.stop = base, name, ledger, stop
        self.http = requests.Session()

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response | None:
        token = self.http.cookies.get("csrftoken", "")
        headers = {**HX, "X-CSRFToken": token, "Referer": self.base + "/"}
        try:
            return self.http.request(
                method, self.base + path, headers=headers, timeout=30, allow_redirects=False, **kwargs
            )
        except requests.RequestException as exc:
            with self.ledger.lock:
                self.ledger.errors.append(f"{type(exc).__name__}")
            return None

    def _until_ok(self, path: str, data: dict[str, str]) -> bool:
        """Post until a 2xx (resends carry the same key); give up only when the test is long over."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            response = self._send("POST", path, data=data)
            if response is not None and response.status_code < 300:
                return True
            time.sleep(0.5)
        return False

    def run(self) -> None:
        self.http.get(self.base + "/accounts/login/", timeout=30)
        self.http.post(
            self.base + "/accounts/login/",
            data={"username": self.name_, "password": PASSWORD, "csrfmiddlewaretoken": self.http.cookies["csrftoken"]},
            headers={"Referer": self.base + "/accounts/login/"},
            timeout=30,
        )
        started = None
        while started is None and not self.stop.is_set():
            response = self._send("POST", f"/studies/{SLUG}/start/")
            if response is not None and response.status_code == 302:
                started = int(re.search(r"/c/(\d+)/", response.headers["Location"]).group(1))
        while not self.stop.is_set() and started is not None:
            self._step(started)

    def _step(self, pk: int) -> None:
        page = self._send("GET", f"/c/{pk}/")
        if page is None or page.status_code != 200:
            time.sleep(0.3)
            return
        html = page.text
        choices = re.findall(r'name="choice" value="(\d+)"\s*(disabled)?', html)
        if choices and not any(disabled for _, disabled in choices):
            key = re.search(r'name="idempotency_key" value="([0-9a-f-]{36})"', html).group(1)
            parent = re.search(r'name="parent" value="(\d+)"', html).group(1)
            with self.ledger.lock:
                self.ledger.tried_votes.add(key)
            if self._until_ok(f"/c/{pk}/vote/", {"parent": parent, "choice": choices[0][0], "idempotency_key": key}):
                with self.ledger.lock:
                    self.ledger.votes.add(key)
            return
        retry = re.search(r'formaction="(/c/\d+/turns/\d+/retry/)"', html)
        if retry:  # a reply failed (its workers were lost too often): the rater retries it
            self._send("POST", retry.group(1))
            return
        if 'id="message-form"' in html:
            key = re.search(r'name="client_key" value="([0-9a-f-]{36})"', html).group(1)
            if self._until_ok(
                f"/c/{pk}/messages/", {"text": f"Tell me about {uuid.uuid4().hex[:6]}", "client_key": key}
            ):
                with self.ledger.lock:
                    self.ledger.messages.add(key)
            return
        time.sleep(0.3)  # replies still being written


@dataclass
class Stack:
    db: PrivatePostgres
    url: str
    base: str
    env: dict[str, str]
    log_dir: Path
    workers: list[ChildProcess]
    web: ChildProcess

    def worker(self) -> ChildProcess:
        argv = [*worker_argv(concurrency=2, name=f"faults{len(self.workers)}@%h", beat=True), "--without-mingle"]
        child = ChildProcess("worker", argv, self.env, self.log_dir)
        child.wait_for("ready.", timeout=300)
        self.workers.append(child)
        return child

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url.replace("postgres://", "postgresql://"), autocommit=True) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
def stack(request: pytest.FixtureRequest, tmp_path: Path, broker_url: str, tiny_model_dir: Path) -> Iterator[Stack]:
    db = PrivatePostgres(max_connections=getattr(request, "param", 100))
    db.start()
    db.create_database("cg_faults")
    url = db.url("cg_faults")
    env = child_env(
        DATABASE_URL=url,
        CELERY_BROKER_URL=broker_url,
        REDIS_URL=broker_url,
        TURN_LEASE_SECONDS=str(LEASE),
        RECOVER_SWEEP_SECONDS="2",
        PENDING_REQUEUE_SECONDS="20",  # messages a killed worker had prefetched wait for the visibility timeout
        RATE_LIMIT_MESSAGES="0",
        RATE_LIMIT_VOTES="0",
        RATE_LIMIT_TAGS="0",
        LOGIN_THROTTLING="0",
        WORKER_PRELOAD_MODELS="",
    )
    manage = [sys.executable, "manage.py"]
    ChildProcess("migrate", [*manage, "migrate", "--noinput"], env, tmp_path).proc.wait(timeout=300)
    setup = SETUP.format(model=str(tiny_model_dir), slug=SLUG, raters=RATERS, password=PASSWORD)
    assert ChildProcess("setup", [*manage, "shell", "-c", setup], env, tmp_path).proc.wait(timeout=120) == 0
    port = free_port()
    web = ChildProcess(
        "web", [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port)], env, tmp_path
    )
    web.wait_for("Application startup complete", timeout=60)
    built = Stack(db=db, url=url, base=f"http://127.0.0.1:{port}", env=env, log_dir=tmp_path, workers=[], web=web)
    built.worker()
    yield built
    for child in [web, *built.workers]:
        child.stop()
    db.close()


def votes_acked(ledger: Ledger) -> int:
    with ledger.lock:
        return len(ledger.votes)


def run_raters(stack: Stack, fault: Any) -> Ledger:
    """Raters work, `fault(stack)` strikes once they have voted a little, then they work on and stop."""
    ledger, stop = Ledger(), threading.Event()
    raters = [Rater(stack.base, f"rater{i}", ledger, stop) for i in range(RATERS)]
    for rater in raters:
        rater.start()
    wait_until(lambda: votes_acked(ledger) >= RATERS, timeout=240, every=0.5, what="votes before the fault")
    fault(stack)
    before = votes_acked(ledger)
    wait_until(lambda: votes_acked(ledger) >= before + RATERS, timeout=240, every=0.5, what="votes after the fault")
    stop.set()
    for rater in raters:
        rater.join(timeout=150)
        assert not rater.is_alive()
    return ledger


def assert_nothing_lost_and_nothing_stuck(stack: Stack, ledger: Ledger) -> None:
    # Every vote acknowledged is stored exactly once; none is stored that was not acknowledged
    stored = [str(key) for (key,) in stack.query("SELECT idempotency_key FROM annotate_comparison")]
    assert len(stored) == len(set(stored))
    assert set(stored) == ledger.votes, (set(stored) ^ ledger.votes, ledger.tried_votes - ledger.votes)
    messages = [str(key) for (key,) in stack.query("SELECT client_key FROM annotate_turn WHERE client_key IS NOT NULL")]
    assert set(messages) == ledger.messages and len(messages) == len(set(messages))
    # Every started reply ends DONE or FAILED (the rater may retry it) within the lease and a minute
    unfinished = "SELECT count(*) FROM annotate_turn WHERE role = 'assistant' AND status IN ('pending', 'streaming')"
    wait_until(lambda: stack.query(unfinished)[0][0] == 0, timeout=LEASE + 60, every=0.5, what="replies finished")


def recovery_seconds(stack: Stack) -> float:
    """Seconds until a page that needs the database answers 200 again."""
    http = requests.Session()
    started = time.monotonic()

    def answers() -> bool:
        try:
            return http.get(stack.base + "/accounts/login/?next=/", timeout=5).status_code == 200 and bool(
                stack.query("SELECT 1")
            )
        except (requests.RequestException, psycopg.Error):
            return False

    wait_until(answers, timeout=30, every=0.2, what="web tier back")
    return time.monotonic() - started


def test_a_lost_worker_node_and_a_database_restart_lose_nothing_and_strand_no_reply(stack):
    timings: dict[str, float] = {}

    def faults(stack: Stack) -> None:
        node = stack.workers[-1]
        group = {node.proc.pid, *(c.pid for c in psutil.Process(node.proc.pid).children(recursive=True))}
        os.killpg(node.proc.pid, signal.SIGKILL)  # main and pool processes at once: no word to the broker
        node.proc.wait(timeout=10)
        wait_until(lambda: not any(psutil.pid_exists(p) for p in group), timeout=10, what="node gone")
        stack.worker()
        stack.db.restart(down_seconds=1.0)
        timings["recovery"] = recovery_seconds(stack)

    ledger = run_raters(stack, faults)
    print(f"\nfaults: web back {timings['recovery']:.1f} s after the restart; {len(ledger.votes)} votes and "
          f"{len(ledger.messages)} messages acknowledged; {len(ledger.errors)} request errors on the way")  # fmt: skip
    assert timings["recovery"] < 10
    assert_nothing_lost_and_nothing_stuck(stack, ledger)
    assert len(ledger.votes) >= 2 * RATERS


@pytest.mark.parametrize("stack", [40], indirect=True)
def test_running_out_of_database_connections_loses_nothing_and_the_app_comes_back(stack):
    hogs: list[psycopg.Connection[Any]] = []

    def exhaust(stack: Stack) -> None:
        # Take every connection slot there is for 5 s (raters get errors meanwhile), then give them back
        url = stack.url.replace("postgres://", "postgresql://")
        while True:
            try:
                hogs.append(psycopg.connect(url, autocommit=True))
            except psycopg.OperationalError:
                break
        time.sleep(5)
        for conn in hogs:
            conn.close()
        assert recovery_seconds(stack) < 10

    ledger = run_raters(stack, exhaust)
    assert len(hogs) >= 1
    assert_nothing_lost_and_nothing_stuck(stack, ledger)
