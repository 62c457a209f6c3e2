"""Simulated raters for bench/load.py (locust, run as a subprocess: gevent's monkeypatching stays in there).

Each simulated rater does what a person in the rating session does, over HTTP with the session cookie and the
CSRF token, as the browser and htmx do it:

1. logs in (GET /accounts/login/, POST the form with its token; a distinct account and the right password,
   since django-axes locks out on failures);
2. starts a conversation (POST /studies/<slug>/start/, a plain form: 302 to /c/<pk>/) and opens its page;
3. sends a message (htmx POST /c/<pk>/messages/ with a fresh ``client_key``, as the form's hidden field);
4. reads the SSE stream (GET /c/<pk>/stream/) to its ``end`` event, recording the first token (the first
   ``turn`` event with text, timed from the message POST) and the whole reply as custom events;
5. re-reads the session fragment (what session.js does on ``end``), tags one candidate (htmx POST /tags/ with
   a label button's value), votes (htmx POST /c/<pk>/vote/ with ``parent`` and the form's
   ``idempotency_key``), thinks 3-8 s, and goes back to 3 until the study's turn limit;
6. ends the conversation with the survey (htmx POST /c/<pk>/finish/) and starts the next.

Requests are named by kind (login, start, page, message, stream, fragment, tag, vote, finish; retry when a
reply failed and the rater pressed its retry button) so the percentiles come per kind.

**Measurement window.** Logging in hashes a password (PBKDF2, about half a CPU-second each here): N raters
logging in at once would fill the first part of every step with hashing, which a real study spreads over its
whole day. So every rater logs in first; once all have (or LOAD_LOGIN_TIMEOUT passed), each starts its first
conversation at a random moment within the next LOAD_THINK_MAX seconds (no synchronised burst), and only then
does the window of LOAD_DURATION seconds open: response times are kept for requests inside it (logins for
all), errors and refusals for the whole run. At the window's end the runner stops itself; the summary carries
the window's start and end (epoch seconds) so bench/load.py reads its own samples over the same span.

Configuration comes from the environment bench/load.py sets: LOAD_STUDY (slug), LOAD_USER_PREFIX and
LOAD_PASSWORD (accounts ``<prefix><i>`` for i in 0..LOAD_USERS-1), LOAD_TURNS, LOAD_THINK_MIN / LOAD_THINK_MAX,
LOAD_DURATION and LOAD_LOGIN_TIMEOUT (seconds), LOAD_RESULT (where the summary JSON is written when the run
stops).

The summary is counted here rather than read back from locust's CSVs because the bench needs what locust
does not keep apart: exact percentiles per kind, HTTP 5xx vs other failures, and 429/503 answers that carry
Retry-After ("refused (graceful)": the app's overload answer, which a rater's browser would wait out).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import gevent
from gevent.event import Event
from locust import events, task
from locust.contrib.fasthttp import FastHttpUser
from locust.exception import StopUser

STUDY = os.environ.get("LOAD_STUDY", "load")
USER_PREFIX = os.environ.get("LOAD_USER_PREFIX", "load-")
PASSWORD = os.environ.get("LOAD_PASSWORD", "load-rater-password")
USERS = int(os.environ.get("LOAD_USERS", "1000000"))
TURNS = int(os.environ.get("LOAD_TURNS", "5"))
THINK = (float(os.environ.get("LOAD_THINK_MIN", "3")), float(os.environ.get("LOAD_THINK_MAX", "8")))
RESULT = os.environ.get("LOAD_RESULT", "")
DURATION = float(os.environ.get("LOAD_DURATION", "60"))
LOGIN_TIMEOUT = float(os.environ.get("LOAD_LOGIN_TIMEOUT", "600"))
WINDOW_FILE = os.environ.get("LOAD_WINDOW_FILE", "")  # written when the window opens (the faults schedule)
RESENDS = 3
STREAM_TIMEOUT = float(os.environ.get("LOAD_STREAM_TIMEOUT", "300"))
MESSAGES = [
    "I need help planning a weekend trip for my family. Any ideas?",
    "Can you help me write a short note to my landlord about the heating?",
    "What should I cook tonight with rice, eggs and some spinach?",
    "How do I start running again after a long break?",
]
FORMS = ("vote-form", "message-form", "finish-form")  # the session fragment shows one of them (or none: ended)
SSE = "SSE"  # request_type of the custom events (first token, reply)

_accounts = itertools.count()
_logins = itertools.count(1)  # raters done logging in (in, or given up at LOGIN_TIMEOUT: then retried in the loop)
_all_logged_in = Event()
window: dict[str, float] = {}  # "start", "end": epoch seconds of the measurement window
ALWAYS_TIMED = {"login", "login page"}

# --- what the summary counts ----------------------------------------------------------------------------

times: dict[str, list[float]] = defaultdict(list)  # ms, successful requests and custom events, by name
errors_5xx: Counter[str] = Counter()
failures: Counter[str] = Counter()  # connection errors, timeouts, unexpected 4xx, failed replies
refused: Counter[str] = Counter()  # 429/503 with Retry-After
examples: dict[str, str] = {}  # one failure message per name, for the log
votes_acknowledged: list[str] = []  # idempotency keys of votes answered 2xx (the faults check: stored once each)
votes_unacknowledged: list[str] = []  # keys of votes never answered 2xx, resends included
votes_in_flight: set[str] = set()  # keys of votes sent and not answered yet


def _graceful(response: Any) -> bool:
    status = getattr(response, "status_code", 0) or 0
    headers = getattr(response, "headers", None) or {}
    return status in (429, 503) and bool(headers.get("Retry-After") or headers.get("retry-after"))


@events.request.add_listener
def _record(
    request_type: str,
    name: str,
    response_time: float,
    response_length: int,
    response: Any = None,
    exception: Any = None,
    **_: Any,
) -> None:
    status = getattr(response, "status_code", 0) or 0
    if _graceful(response):
        refused[name] += 1
    elif exception is not None:
        (errors_5xx if status >= 500 else failures)[name] += 1
        examples.setdefault(name, f"HTTP {status}: {exception!r}"[:300])
    elif name in ALWAYS_TIMED or _in_window():
        times[name].append(float(response_time))


def _in_window() -> bool:
    now = time.time()
    return "start" in window and window["start"] <= now < window.get("end", float("inf"))


@events.test_start.add_listener
def _schedule(environment: Any, **_: Any) -> None:
    """Open the window once everyone has logged in (plus the stagger), and stop the run when it closes."""

    def run() -> None:
        _all_logged_in.wait(timeout=LOGIN_TIMEOUT)
        _all_logged_in.set()  # after a timeout too: the raters still logging in join late
        window["start"] = time.time() + THINK[1]
        window["end"] = window["start"] + DURATION
        if WINDOW_FILE:
            Path(WINDOW_FILE).write_text(json.dumps(window))
        gevent.sleep(THINK[1] + DURATION)
        environment.runner.quit()

    gevent.spawn(run)


@events.quitting.add_listener
def _write_summary(environment: Any, **_: Any) -> None:
    if not RESULT:
        return
    total = environment.stats.total
    summary = {
        "times_ms": times,
        "errors_5xx": errors_5xx,
        "failures": failures,
        "refused": refused,
        "examples": examples,
        "window": window,
        "votes_acknowledged": votes_acknowledged,
        "votes_unacknowledged": votes_unacknowledged,
        "votes_in_flight": sorted(votes_in_flight),
        "requests": total.num_requests,
        "locust_failures": total.num_failures,
        "duration_s": (total.last_request_timestamp or 0) - (total.start_time or 0),
        "rps": total.total_rps,
    }
    Path(RESULT).write_text(json.dumps(summary))


# --- the rater ----------------------------------------------------------------------------------------


class Refused(Exception):
    """A step the app refused or failed: the rater starts over from a fresh conversation (or login)."""


class Resend(Exception):
    """A POST with an idempotency key got a 5xx or no answer: send the same form again."""


def _field(html: str, name: str) -> str | None:
    found = re.search(rf'name="{name}" value="([^"]*)"', html)
    return found.group(1) if found else None


def _shown(form: dict[str, str], html: str) -> None:
    """Post the form's `shown` (the last turn the page shows) as the browser does: the answer then holds only
    what changed, not the whole session."""
    shown = _field(html, "shown")
    if shown is not None:
        form["shown"] = shown


class Rater(FastHttpUser):
    """One rater account, one conversation at a time (the task is the whole conversation)."""

    network_timeout = STREAM_TIMEOUT  # a stream may wait long for a worker under overload
    connection_timeout = 30.0

    def on_start(self) -> None:
        self.username = f"{USER_PREFIX}{next(_accounts) % USERS}"
        self.csrf = ""
        self.logged_in = False
        self.started = False
        # Logged in before the window opens: a refused login (busy: 503 / 429, slept out in `_request`) is tried
        # again here, not inside the window, where its password hash would take the CPU the window measures.
        deadline = time.monotonic() + LOGIN_TIMEOUT
        while not self.logged_in and time.monotonic() < deadline:
            try:
                self.login()
            except Refused:  # counted (as refused or failed); the task loop logs in again after the deadline
                time.sleep(1.0)
        if next(_logins) >= USERS:
            _all_logged_in.set()

    # --- HTTP helpers ---------------------------------------------------------------------------------

    def _resend(self, method: str, url: str, name: str, *, data: dict[str, str], htmx: bool = False) -> Any:
        """A POST that carries an idempotency key (message, vote): on a 5xx or a lost connection, send the same form
        again (up to RESENDS times, a second apart), as a rater clicking again would; every failed try counts."""
        for attempt in range(RESENDS + 1):
            try:
                return self._request(method, url, name, data=data, htmx=htmx, resend=attempt < RESENDS)
            except Resend:
                time.sleep(1.0)
        raise Refused(name)  # not reached: the last try raises Refused itself

    def _request(
        self,
        method: str,
        url: str,
        name: str,
        *,
        data: dict[str, str] | None = None,
        htmx: bool = False,
        resend: bool = False,
    ) -> Any:
        """One request whose status is judged here: 2xx/3xx pass, 429/503 with Retry-After are graceful refusals
        (slept out, then Refused), anything else fails the request and raises Refused (Resend, when `resend`
        and it was a 5xx or no answer)."""
        headers = {"X-CSRFToken": self.csrf} if method == "POST" else {}
        if htmx:
            headers["HX-Request"] = "true"
        with self.client.request(
            method, url, name=name, data=data, headers=headers, allow_redirects=False, catch_response=True
        ) as response:
            status = response.status_code or 0
            if 200 <= status < 400:
                response.success()
                return response
            if _graceful(response):
                response.success()
                wait = float(response.headers.get("Retry-After") or 5)
                time.sleep(min(max(wait, 1.0), 30.0))
                raise Refused(f"{name}: {status} (graceful)")
            response.failure(f"HTTP {status}: {(response.text or '')[:200]}")
            if resend and (status == 0 or status >= 500):
                raise Resend(name)
            raise Refused(f"{name}: HTTP {status}")

    def _cookie(self, name: str) -> str:
        for cookie in self.client.cookiejar:
            if cookie.name == name:
                return str(cookie.value)
        return ""

    def _fail(self, name: str, message: str) -> None:
        """Record a failure that is no HTTP status (a reply that failed, a stream cut short)."""
        self.environment.events.request.fire(
            request_type=SSE, name=name, response_time=0, response_length=0, exception=Refused(message), context={}
        )

    def _event(self, name: str, ms: float) -> None:
        self.environment.events.request.fire(
            request_type=SSE, name=name, response_time=ms, response_length=0, exception=None, context={}
        )

    # --- the session --------------------------------------------------------------------------------

    def login(self) -> None:
        page = self._request("GET", "/accounts/login/", "login page")
        token = _field(page.text or "", "csrfmiddlewaretoken") or self._cookie("csrftoken")
        self.csrf = self._cookie("csrftoken")
        form = {"username": self.username, "password": PASSWORD, "csrfmiddlewaretoken": token}
        response = self._request("POST", "/accounts/login/", "login", data=form)
        if response.status_code != 302:
            self._fail("login", f"login of {self.username} answered {response.status_code}, not a redirect")
            raise Refused("login")
        self.csrf = self._cookie("csrftoken")  # rotated at login
        self.logged_in = True

    @task
    def conversation(self) -> None:
        if not self.started:  # wait for every rater to be in, then start at a random moment (no burst)
            _all_logged_in.wait()
            self.started = True
            time.sleep(random.uniform(0, THINK[1]))
        try:
            if not self.logged_in:
                self.login()
            self._conversation()
        except Refused:
            time.sleep(1.0)  # a failed or refused step: start over, not in a tight loop
        except (gevent.GreenletExit, StopUser):
            raise  # the run is ending
        except Exception as exc:  # a timeout or a cut connection mid-stream, a page we could not parse
            self._fail("exception", f"{type(exc).__name__}: {exc}")
            time.sleep(1.0)

    def _conversation(self) -> None:
        start = self._request("POST", f"/studies/{STUDY}/start/", "start", data={"csrfmiddlewaretoken": self.csrf})
        found = re.search(r"/c/(\d+)/", start.headers.get("Location") or "")
        if not found:
            self._fail("start", f"start answered {start.status_code} without a conversation")
            raise Refused("start")
        pk = int(found.group(1))
        html = self._request("GET", f"/c/{pk}/", "page").text or ""
        for _ in range(TURNS):
            if not any(f'id="{form}"' in html for form in FORMS):  # an answer that was not the whole session
                html = self._request("GET", f"/c/{pk}/", "fragment", htmx=True).text or ""
            if 'id="vote-form"' in html:  # a resumed conversation may await a vote, its replies still streaming
                if re.search(r'data-status="(pending|streaming)"', html):
                    self._stream(pk, time.perf_counter(), resumed=True)
                    html = self._composer(pk)
            elif 'id="message-form"' in html:
                html = self._message(pk, html)
            else:
                break  # no messages left
            html = self._vote(pk, html)
            time.sleep(random.uniform(*THINK))
        if 'id="finish-form"' not in html:
            html = self._request("GET", f"/c/{pk}/", "fragment", htmx=True).text or ""
        if 'id="finish-form"' in html:
            form = {"goal": random.choice(["yes", "partly", "no"]), "understanding": str(random.randint(1, 5))}
            self._request("POST", f"/c/{pk}/finish/", "finish", data=form, htmx=True)

    def _message(self, pk: int, html: str) -> str:
        """Send a message, read the stream to its end, and return the session fragment with the vote form."""
        form = {
            "text": random.choice(MESSAGES),
            "client_key": _field(html, "client_key") or str(uuid.uuid4()),
        }
        _shown(form, html)
        sent = time.perf_counter()
        self._resend("POST", f"/c/{pk}/messages/", "message", data=form, htmx=True)
        self._stream(pk, sent)
        return self._composer(pk)

    def _composer(self, pk: int) -> str:
        """What static/annotate/session.js reloads when the candidates are done: the composer, not the session."""
        return self._request("GET", f"/c/{pk}/?part=composer", "composer", htmx=True).text or ""

    def _stream(self, pk: int, sent: float, resumed: bool = False) -> None:
        """Read /c/<pk>/stream/ until `end`, reconnecting like EventSource when it closes early; a resumed
        conversation's stream records no first token (it did not start with this request)."""
        first = resumed
        deadline = time.monotonic() + STREAM_TIMEOUT
        while time.monotonic() < deadline:
            with self.client.get(
                f"/c/{pk}/stream/",
                name="stream",
                headers={"Accept": "text/event-stream"},
                stream=True,
                catch_response=True,
            ) as response:
                if not 200 <= (response.status_code or 0) < 300:
                    response.failure(f"HTTP {response.status_code}")
                    raise Refused("stream")
                response.success()
                buffer = ""
                for chunk in response.iter_content(chunk_size=4096):
                    buffer += chunk if isinstance(chunk, str) else chunk.decode("utf-8", "replace")
                    while "\n\n" in buffer:
                        block, buffer = buffer.split("\n\n", 1)
                        event, data = "message", ""
                        for line in block.splitlines():
                            if line.startswith("event:"):
                                event = line[6:].strip()
                            elif line.startswith("data:"):
                                data += line[5:].strip()
                        if event == "end":
                            if not resumed:
                                self._event("reply", (time.perf_counter() - sent) * 1000)
                            return
                        if event != "turn" or not data:
                            continue
                        state = json.loads(data)
                        if state.get("status") == "failed":
                            self._fail("reply failed", f"turn {state.get('id')} failed")
                        elif state.get("text") and not first:
                            first = True
                            self._event("first token", (time.perf_counter() - sent) * 1000)
            self._event("stream reconnect", 0)
            time.sleep(1.0)  # the server closed the stream before `end`: EventSource retries after `retry:`
        self._fail("reply", f"no end of stream in {STREAM_TIMEOUT:g} s")
        raise Refused("stream")

    def _vote(self, pk: int, html: str) -> str:
        """Tag one candidate and vote; return the fragment the vote answered."""
        candidates = {int(c): s for c, s in re.findall(r'id="cand-(\d+)" data-status="(\w+)"', html)}
        for _ in range(RESENDS):  # a failed reply: press its retry button and wait for it, as a rater would
            failed = [c for c, s in candidates.items() if s == "failed"]
            if not failed:
                break
            for turn in failed:
                self._request("POST", f"/c/{pk}/turns/{turn}/retry/", "retry", data={}, htmx=True)
            self._stream(pk, time.perf_counter(), resumed=True)
            html = self._composer(pk)
            candidates = {int(c): s for c, s in re.findall(r'id="cand-(\d+)" data-status="(\w+)"', html)}
        if not candidates or any(s != "done" for s in candidates.values()):
            self._fail("vote", f"candidates not all done: {candidates}")
            raise Refused("vote")
        labels = [
            (turn, label)
            for label, turn in re.findall(
                r'class="tag-label" name="label" value="(\d+)"[^>]*?formaction="[^"]*\?turn=(\d+)&amp;task=live"', html
            )
            if int(turn) in candidates
        ]
        if labels:
            turn, label = random.choice(labels)
            self._request("POST", "/tags/", "tag", data={"turn": turn, "task": "live", "label": label}, htmx=True)
        choice = str(random.choice(list(candidates))) if random.random() < 0.9 else "tie"
        go_on = str(random.choice(list(candidates)))  # after a tie: the reply the conversation goes on from
        form = {
            "parent": _field(html, "parent") or "",
            "idempotency_key": _field(html, "idempotency_key") or str(uuid.uuid4()),
            "choice": choice,
            "strength": random.choice(["slight", "clear"]),
            "reason": "",
            "continue_from": go_on,
        }
        _shown(form, html)
        key = form["idempotency_key"]
        # A vote cut off by the end of the run (the greenlet killed while it waits) may be stored without an answer:
        # it stays in flight. Only an answer takes it out.
        votes_in_flight.add(key)
        try:
            response = self._resend("POST", f"/c/{pk}/vote/", "vote", data=form, htmx=True)
        except Refused:
            votes_in_flight.discard(key)
            votes_unacknowledged.append(key)
            raise
        votes_in_flight.discard(key)
        votes_acknowledged.append(key)
        return response.text or ""
