#!/usr/bin/env python
"""rater_effort: seconds, keystrokes and clicks for a rater to hold one 3-turn conversation with tags (issue 12).

Headless Debian Chromium (Playwright's sync API) does what a keyboard rater does, on the whole stack started
here on a database and Redis db of the bench's own:

- PostgreSQL database ``cg_bench_effort`` (created if missing, ``manage.py migrate``), Redis db 7 as the
  Celery broker, the turn feed and the cache (flushed before and after);
- ``bench/fake_openai.py``: ``--words`` words, one every ``--interval`` s (20 x 20 ms by default), so the
  model's share of the time is small and the same for every checkout;
- uvicorn (one process) and one Celery threads worker for the generation queues, run from ``--app-dir``'s
  checkout with this interpreter (no suggestions worker: no model competes for the CPU);
- per repetition, through the ORM in a subprocess (``--setup``, in ``--app-dir``): a fresh study (K=2, the
  study's defaults otherwise, its model pool one ``openai`` ModelConfig on the fake server, one scenario),
  the only active one, and a fresh rater account.

The rater's path, every key sent through ``page.keyboard`` and counted (a press = 1, a typed character = 1),
clicks counted apart (only where the keyboard could not do the step, each with the reason):

1. open the site (sent to the log-in page), type the username, Tab, the password, Enter; Tab to the study's
   "Start" button, Enter;
2. three times: type a message and press Enter; wait until both replies are done and the vote is enabled
   (the model wait); pick a reply with its key (``1``; ``2`` then ``s`` for "slight"; ``t`` for a tie);
   tag a reply with its label key (the first ``button.tag-label[data-key]`` of the chosen reply's tag bar,
   read from the page; the first reply's on a tie), wait for the tag's chip; Enter submits the vote. Where
   the form still lacks something required (after issue 12: which reply a tie goes on from), the browser
   refuses that Enter and puts the focus on it: Space picks the focused reply, Enter again. Wait for the
   message box;
3. Tab to "End the conversation", Enter opens it; Tab to the goal radios, arrows to "partly"; Tab, arrows to
   understanding 4; Tab to "End conversation", Enter; land on the transcript.

Tab moves take the shorter way round (Tab or Shift+Tab), worked out from the page's focus order as a rater
who sees the page would; only the presses sent are counted. A step that does not happen (Enter leaves the
vote unsent, a key tags nothing) is done by clicking, counted as a click, and named in the output.

Seconds: wall time from opening the site to the transcript; "waiting" is the model's part (Enter on a
message until both replies are done), "acting" the rest: the script's own presses plus every round trip
of the app (log-in, vote, tag, survey). A script does not think, so acting seconds are the app's share of
the rater's time, not a person's.

    .venv/bin/python bench/rater_effort.py                            # this checkout, 3 conversations
    .venv/bin/python bench/rater_effort.py --app-dir /tmp/effort-before \\
        --database-url postgres://postgres@127.0.0.1:5432/cg_bench_effort_before --json var/effort-before.json
    .venv/bin/python bench/rater_effort.py --tag-with click           # tag by mouse, then Enter
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common import ROOT, Child, ensure_database, fake_model_config, flush_broker, free_port, refuse_shared, stack_stop

DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/cg_bench_effort"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/7"
CONFIG_NAME = "effort-fake-openai"
PASSWORD = "effort-rater-password"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
MESSAGES = ["Hi! Can you help me plan something?", "It is for a birthday next week.", "Eight people, small budget."]
# Per turn: the vote keys (after the reply is picked, "s" toggles the strength to slight), as in the browser test.
VOTES = [["1"], ["2", "s"], ["t"]]
# Keys session.js/tagging.js keep for voting and moving the tag focus: never a tag key.
RESERVED_KEYS = set("123456789tbsr[]")
SURVEY = {"goal": "partly", "understanding": "4"}
TAB_LIMIT = 120  # presses one Tab move may take before it gives up and clicks


# --- command line --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3, help="conversations (fresh study and rater each); medians")
    parser.add_argument("--words", type=int, default=20, help="words per fake reply")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between the fake model's words")
    parser.add_argument(
        "--tag-with",
        choices=("key", "click"),
        default="key",
        help="key: the label's key (keyboard only); click: a click on the label button (then Enter votes)",
    )
    parser.add_argument(
        "--app-dir",
        type=Path,
        default=ROOT,
        help="the checkout whose manage.py, app and static files are served (its own venv is not needed: "
        "this interpreter runs it)",
    )
    parser.add_argument("--label", default="", help="the row's name in the table (default: the checkout)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_EFFORT_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="PostgreSQL database of the bench (created and migrated if missing; one per schema: use another "
        "for another checkout); env BENCH_EFFORT_DATABASE_URL",
    )
    parser.add_argument(
        "--broker-url",
        default=os.environ.get("BENCH_EFFORT_BROKER_URL", DEFAULT_BROKER_URL),
        help="Redis db of the bench (broker, feed, cache; flushed before and after); env BENCH_EFFORT_BROKER_URL",
    )
    parser.add_argument("--timeout", type=float, default=60, help="seconds any one wait may take")
    parser.add_argument("--json", type=Path, default=None, help="write every repetition and the medians here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server and worker logs (path printed)")
    parser.add_argument("--setup", default="", help=argparse.SUPPRESS)  # internal: the ORM set-up subprocess
    args = parser.parse_args(argv)
    if args.setup:
        return args
    args.app_dir = args.app_dir.resolve()
    if not (args.app_dir / "manage.py").is_file():
        parser.error(f"--app-dir {args.app_dir} has no manage.py")
    if args.reps < 1:
        parser.error("--reps must be at least 1")
    return args


# --- set-up through the ORM (`rater_effort.py --setup SPEC`, run in --app-dir) ----------------------------


def setup(spec: dict[str, Any]) -> dict[str, Any]:
    """The model config, a fresh study (the only active one, so the home page lists it alone), one scenario
    and a fresh rater. Runs against --app-dir's code, whatever its schema."""
    sys.path.insert(0, spec["app_dir"])  # bench/common.py put this checkout first; the app is --app-dir's
    import django

    django.setup()
    from django.contrib.auth import get_user_model

    from annotate.models import Scenario, Study

    config = fake_model_config(
        name=CONFIG_NAME, bench="bench/rater_effort.py", base_url=spec["base_url"], words=spec["words"]
    )
    Study.objects.filter(is_active=True).update(is_active=False)
    study = Study.objects.create(
        name=f"Rater effort {spec['run']}", slug=f"effort-{spec['run']}", candidates_per_turn=2
    )
    study.model_pool.set([config])
    Scenario.objects.create(
        study=study, external_id="s1", title="Plan a birthday", brief="You want help planning a small birthday."
    )
    username = f"effort-{spec['run']}"
    get_user_model().objects.create_user(username=username, password=spec["password"])
    return {"slug": study.slug, "username": username}


# --- processes -------------------------------------------------------------------------------------------


class AppChild(Child):
    """A `Child` run from --app-dir (the tests' class runs from this checkout)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path, cwd: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )


def start_stack(args: argparse.Namespace, env: dict[str, str], log_dir: Path) -> tuple[list[Child], str, str]:
    """fake_openai, uvicorn and a generation worker; returns them, the site's and the model's base URLs."""
    py = sys.executable
    children: list[Child] = []
    fake = AppChild(
        "fake_openai",
        [py, str(ROOT / "bench" / "fake_openai.py"), "--port", "0", "--words", str(args.words),
         "--interval", str(args.interval)],
        env, log_dir, ROOT,
    )  # fmt: skip
    children.append(fake)
    fake.wait_for("listening on", timeout=30)
    found = re.search(r"listening on (http://\S+)", fake.output())
    model_url = found.group(1) if found else ""
    port = free_port()
    web = AppChild(
        "web",
        [py, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
         "--no-access-log"],
        env, log_dir, args.app_dir,
    )  # fmt: skip
    children.append(web)
    worker = AppChild(
        "worker",
        [py, "-m", "celery", "-A", "workers", "worker", "-Q", "generation,generation_io", "-P", "threads",
         "-c", "4", "-n", "effort@%h", "--loglevel", "INFO"],
        {**env, "DB_POOL": "0"}, log_dir, args.app_dir,
    )  # fmt: skip
    children.append(worker)
    web.wait_for("Application startup complete", timeout=120)
    worker.wait_for(" ready.", timeout=120)
    return children, f"http://127.0.0.1:{port}", model_url


def run_setup(args: argparse.Namespace, env: dict[str, str], spec: dict[str, Any]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--setup", json.dumps(spec)],
        cwd=args.app_dir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"set-up failed:\n{out.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def checkout_name(app_dir: Path) -> str:
    """`<dir> @ <commit>[+working tree]`, read without touching the repository (no index refresh)."""
    git = ["git", "--no-optional-locks", "-C", str(app_dir)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False)
    dirty = subprocess.run([*git, "diff", "--quiet", "HEAD"], capture_output=True, check=False).returncode != 0
    commit = head.stdout.strip() or "?"
    return f"{app_dir} @ {commit}{' + working tree' if dirty else ''}"


# --- what the rater does, counted -------------------------------------------------------------------------

# The page's sequential focus order, as Chromium walks it: focusable, enabled, rendered elements in DOM order;
# a radio group is one stop (its checked radio, else its first going forward, its last going back). Returns
# the presses from the focus to the first stop matching the selector, one way (-1: none). With nothing
# focused, Chromium starts from where the last click was (`clicked`, even on a button that took no focus),
# else from the top (forward) or the bottom (back) of the page.
FOCUS_DISTANCE_JS = """
([selector, backward, clicked]) => {
  const all = [...document.querySelectorAll("a[href], button, input, select, textarea, summary, [tabindex]")];
  const shown = el => !el.matches(":disabled") && el.tabIndex >= 0 && el.type !== "hidden" && !el.closest("[inert]")
    && el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden"
    && (el.tagName !== "SUMMARY" || (el.parentElement.tagName === "DETAILS"
        && el.parentElement.querySelector(":scope > summary") === el));
  const active = document.activeElement;
  const stops = [];
  for (const el of all.filter(shown)) {
    if (el.type === "radio" && el.name) {
      const group = all.filter(r => r.type === "radio" && r.name === el.name && r.form === el.form && shown(r));
      const current = group.includes(active) ? active : group.find(r => r.checked);
      const stop = current || (backward ? group[group.length - 1] : group[0]);
      if (el !== stop) continue;
    }
    stops.push(el);
  }
  const n = stops.length;
  const to = stops.findIndex(el => el.matches(selector));
  if (to < 0) return -1;
  const from = active && active !== document.body ? active : (clicked && document.querySelector(clicked));
  if (!from) return backward ? n - to : to + 1;
  const at = stops.indexOf(from);
  if (at >= 0) return backward ? (at - to + n) % n : (to - at + n) % n;
  // A starting point that is no stop itself: the next stop is the first one after it.
  const next = stops.filter(el => from.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_PRECEDING).length;
  return backward ? ((next - 1 - to + 2 * n) % n) + 1 : ((to - next + n) % n) + 1;
}
"""


@dataclass
class Effort:
    """One conversation's counts and times."""

    keys: int = 0
    clicks: int = 0
    total_s: float = 0.0
    waiting_s: float = 0.0  # the model: Enter on a message until both replies are done and the vote is on
    keys_by_phase: dict[str, int] = field(default_factory=dict)
    clicks_where: list[str] = field(default_factory=list)  # why each click was needed
    actions: dict[str, list[str]] = field(default_factory=dict)  # by phase: keys ("Tab x3"), typing, clicks
    seconds_by_phase: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def acting_s(self) -> float:
        return self.total_s - self.waiting_s


class Rater:
    """Drives the page; every key and click goes through `press`, `type`, `click`, which count them."""

    def __init__(self, page: Any, timeout: float) -> None:
        self.page = page
        self.timeout = timeout
        self.effort = Effort()
        self.phase = ""
        self.clicked: str | None = None  # the last click: where Chromium's Tab starts while nothing has the focus
        self.bad_responses: list[str] = []
        page.on("response", self._response)

    def _response(self, response: Any) -> None:
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):
            self.bad_responses.append(f"{response.status} {response.request.method} {response.url}")

    def _count_key(self, n: int, action: str) -> None:
        self.effort.keys += n
        self.effort.keys_by_phase[self.phase] = self.effort.keys_by_phase.get(self.phase, 0) + n
        self._log(action)

    def _log(self, action: str) -> None:
        """Consecutive presses of one key are folded: "Tab x3"."""
        actions = self.effort.actions.setdefault(self.phase, [])
        last = actions[-1] if actions else ""
        if action.startswith("key ") and (last == action or last.startswith(f"{action} x")):
            times = int(last.rsplit(" x", 1)[1]) if " x" in last else 1
            actions[-1] = f"{action} x{times + 1}"
        else:
            actions.append(action)

    def press(self, key: str) -> None:
        self.page.keyboard.press(key)
        self._count_key(1, f"key {key}")

    def type(self, text: str) -> None:
        self.page.keyboard.type(text)
        self._count_key(len(text), f"type {len(text)} chars")

    def click(self, selector: str, why: str) -> None:
        self.page.locator(selector).first.click()
        self.clicked = selector
        self.effort.clicks += 1
        self.effort.clicks_where.append(f"{self.phase}: {why}")
        self._log(f"click {selector}")

    def focused(self, selector: str) -> bool:
        return bool(self.page.evaluate("s => !!document.activeElement && document.activeElement.matches(s)", selector))

    def tab_to(self, selector: str) -> bool:
        """Tab (or Shift+Tab, whichever is shorter) until the focus is on `selector`."""
        if self.focused(selector):
            return True
        forward = self.page.evaluate(FOCUS_DISTANCE_JS, [selector, False, self.clicked])
        backward = self.page.evaluate(FOCUS_DISTANCE_JS, [selector, True, self.clicked])
        if forward < 0 and backward < 0:
            return False
        key = "Shift+Tab" if 0 <= backward < forward or forward < 0 else "Tab"
        for _ in range(TAB_LIMIT):
            self.press(key)
            if self.focused(selector):
                self.clicked = None
                return True
        return False

    def choose_radio(self, selector: str, value: str | None) -> None:
        """Focus the radio group by Tab, then check `value` (None: whichever radio took the focus) with Space
        or the arrow keys; by click if the keyboard could not."""
        if self.tab_to(selector):
            for _ in range(12):
                state = self.page.evaluate("() => [document.activeElement.value, document.activeElement.checked]")
                if value is None or state[0] == value:
                    if not state[1]:
                        self.press("Space")
                    return
                self.press("ArrowDown")
        target = selector if value is None else f"{selector}[value='{value}']"
        self.click(target, f"could not reach {target} by keyboard")

    def wait(self, expression: str, what: str, arg: Any = None) -> None:
        try:
            self.page.wait_for_function(expression, arg=arg, timeout=self.timeout * 1000)
        except Exception as exc:
            raise RuntimeError(f"{self.phase}: {what}: not in {self.timeout:g} s ({exc})") from exc

    # --- the steps ---

    def log_in(self, base_url: str, username: str, slug: str) -> None:
        self.phase = "log in + start"
        self.page.goto(f"{base_url}/")
        self.page.wait_for_url(re.compile(r"/accounts/login/"))
        if not self.tab_to("input[name=username]"):
            self.click("input[name=username]", "username field not reachable by keyboard")
        self.type(username)
        if not self.tab_to("input[name=password]"):
            self.click("input[name=password]", "password field not reachable by keyboard")
        self.type(PASSWORD)
        self.press("Enter")
        self.page.wait_for_url(f"{base_url}/")
        start = f"#start-{slug}"
        if self.tab_to(start):
            self.press("Enter")
        else:
            self.click(start, "start button not reachable by keyboard")
        self.page.wait_for_url(re.compile(r"/c/\d+/$"))

    def send(self, text: str) -> None:
        self.page.wait_for_selector("#message")
        if not self.tab_to("#message"):
            self.click("#message", "message box not reachable by keyboard")
        self.type(text)
        began = time.monotonic()
        self.press("Enter")
        self.wait(
            """() => {
              const cards = [...document.querySelectorAll("#vote-form .candidate")];
              const submit = document.getElementById("vote-submit");
              return cards.length >= 2 && cards.every(c => c.dataset.status === "done")
                && submit && !submit.matches(":disabled")
                && cards.every(c => c.querySelector(".tag-bar"));
            }""",
            "both replies done, vote enabled",
        )
        self.effort.waiting_s += time.monotonic() - began

    def pick(self, keys: list[str]) -> str:
        """The vote keys; returns the DOM id of the card whose tag bar gets the tag."""
        for key in keys:
            self.press(key)
        index = keys[0]
        if index.isdigit():
            radio = f"#vote-form .candidate[data-index='{index}'] input[name=choice]"
            card = self.page.evaluate(f"() => document.querySelector(\"{radio}\").closest('.candidate').id")
        else:
            value = {"t": "tie", "b": "all_bad"}[index]
            radio = f"#vote-form input[name=choice][value={value}]"
            card = self.page.evaluate("() => document.querySelector('#vote-form .candidate').id")
        if not self.page.locator(radio).is_checked():
            self.click(radio, f"key {index!r} did not pick the reply")
        if "s" in keys[1:] and not self.page.locator("#vote-form input[name=strength][value=slight]").is_checked():
            self.click("#vote-form input[name=strength][value=slight]", "key 's' did not set the strength")
        return str(card)

    def tag(self, card: str, tag_with: str) -> None:
        bar = f"#{card} .tag-bar"
        keys = self.page.eval_on_selector_all(f"{bar} button.tag-label[data-key]", "bs => bs.map(b => b.dataset.key)")
        key = next((k for k in keys if k and k.lower() not in RESERVED_KEYS), None)
        if key is None:
            raise RuntimeError(f"{self.phase}: the reply's tag bar has no label key: {keys}")
        button = f"{bar} button.tag-label[data-key='{key}']"
        chips = self.page.locator(f"{bar} .tag-chip").count()
        if tag_with == "key":
            self.press(key)
        else:
            self.click(button, "tag by mouse (--tag-with click)")
        try:
            self.page.wait_for_function(
                "([sel, n]) => document.querySelectorAll(sel).length > n", arg=[f"{bar} .tag-chip", chips], timeout=5000
            )
        except Exception:
            self.click(button, f"tag key {key!r} put no tag on the reply")
            self.wait(
                "([sel, n]) => document.querySelectorAll(sel).length > n", "the tag's chip", [f"{bar} .tag-chip", chips]
            )

    def complete_form(self) -> None:
        """What the vote form still requires (the browser's own validation), chosen by Tab and keys: where Enter
        did not lead the focus to it."""
        for _ in range(5):
            missing = self.page.evaluate(
                """() => {
                  const bad = [...document.querySelectorAll("#vote-form :invalid")].filter(e => e.tagName !== "FORM"
                    && e.tagName !== "FIELDSET");
                  return bad.length ? [bad[0].tagName, bad[0].type, bad[0].name] : null;
                }"""
            )
            if not missing:
                return
            tag, kind, name = missing
            self.effort.notes.append(f"{self.phase}: the vote form required {name!r}")
            if kind == "radio":
                self.choose_radio(f"#vote-form input[name={name}]", None)
            else:
                raise RuntimeError(
                    f"{self.phase}: the vote form requires a {tag.lower()} {name!r} this bench can't fill"
                )

    def submit_vote(self) -> None:
        """Enter. Where the form lacks something required, the browser refuses, says what and puts the focus on
        it (after issue 12: which reply a tie goes on from): Space picks the focused radio, Enter again. Where
        Enter sends nothing or is refused by the server, a click on Submit."""
        if self.focused("textarea, input[type=text], button, summary, select"):
            self.effort.notes.append(f"{self.phase}: focus on a control before Enter")
        for _ in range(3):
            before = len(self.bad_responses)
            self.press("Enter")
            outcome = self._vote_outcome(before)
            if outcome != "invalid":
                break
            kind, name = self.page.evaluate("() => [document.activeElement.type, document.activeElement.name]")
            self.effort.notes.append(f"{self.phase}: Enter was refused by the browser: {name!r} required")
            if kind != "radio":
                break
            self.press("Space")
        if outcome == "invalid" or self.page.locator("#vote-form :invalid").count():
            self.complete_form()
            before = len(self.bad_responses)
            self.press("Enter")
            outcome = self._vote_outcome(before)
        if outcome != "sent":
            refused = "; ".join(self.bad_responses[before:]) or "nothing sent"
            self.click("#vote-submit", f"Enter did not submit the vote ({refused})")
            self.page.wait_for_selector("#vote-form", state="detached", timeout=self.timeout * 1000)
        self.page.wait_for_selector("#message, #finish-form", state="attached", timeout=self.timeout * 1000)

    def _vote_outcome(self, before: int) -> str:
        """sent (the vote form is gone), invalid (the browser's validation took the focus), refused (an HTTP
        error came back) or nothing (10 s passed)."""
        deadline = time.monotonic() + min(self.timeout, 10)
        while time.monotonic() < deadline:
            if self.page.locator("#vote-form").count() == 0:
                return "sent"
            if self.focused("#vote-form :invalid"):
                return "invalid"
            if len(self.bad_responses) > before:
                self.page.wait_for_timeout(200)
                return "sent" if self.page.locator("#vote-form").count() == 0 else "refused"
            self.page.wait_for_timeout(20)
        return "nothing"

    def finish(self) -> None:
        self.phase = "survey"
        if not self.page.locator("#finish-form").is_visible():
            summary = "details.finish > summary"
            if self.tab_to(summary):
                self.press("Enter")
            if not self.page.locator("#finish-form").is_visible():
                self.click(summary, "could not open the survey by keyboard")
        self.choose_radio("#finish-form input[name=goal]", SURVEY["goal"])
        self.choose_radio("#finish-form input[name=understanding]", SURVEY["understanding"])
        if self.tab_to("#finish-submit"):
            self.press("Enter")
        else:
            self.click("#finish-submit", "End conversation not reachable by keyboard")
        self.page.wait_for_url(re.compile(r"/c/\d+/transcript/$"), timeout=self.timeout * 1000)


def converse(page: Any, base_url: str, account: dict[str, Any], args: argparse.Namespace) -> Effort:
    """One whole conversation, timed and counted."""
    rater = Rater(page, args.timeout)
    began = time.monotonic()
    mark = began
    rater.log_in(base_url, account["username"], account["slug"])
    rater.effort.seconds_by_phase[rater.phase] = time.monotonic() - mark
    for turn, (text, keys) in enumerate(zip(MESSAGES, VOTES, strict=True), start=1):
        mark = time.monotonic()
        rater.phase = f"turn {turn}"
        rater.send(text)
        card = rater.pick(keys)
        rater.tag(card, args.tag_with)
        rater.submit_vote()
        rater.effort.seconds_by_phase[rater.phase] = time.monotonic() - mark
    mark = time.monotonic()
    rater.finish()
    rater.effort.seconds_by_phase[rater.phase] = time.monotonic() - mark
    rater.effort.total_s = time.monotonic() - began
    if rater.bad_responses:
        rater.effort.notes.append(f"HTTP errors: {rater.bad_responses}")
    return rater.effort


def check_database(database_url: str, slug: str) -> tuple[int, int, str]:
    """The conversation as stored: votes, tags by its rater, status (so a bench run proves the flow worked)."""
    import psycopg

    url = database_url.replace("postgres://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT c.id, c.status, c.rater_id FROM annotate_conversation c JOIN annotate_study s ON s.id = c.study_id "
            "WHERE s.slug = %s",
            [slug],
        ).fetchone()
        if row is None:
            return 0, 0, "none"
        votes = conn.execute("SELECT count(*) FROM annotate_comparison WHERE conversation_id = %s", [row[0]])
        n_votes = int((votes.fetchone() or [0])[0])
        tags = conn.execute(
            "SELECT count(*) FROM labeling_tag t JOIN annotate_turn x ON x.id = t.turn_id "
            "WHERE x.conversation_id = %s AND t.rater_id = %s",
            [row[0], row[2]],
        )
        n_tags = int((tags.fetchone() or [0])[0])
    return n_votes, n_tags, str(row[1])


# --- report ----------------------------------------------------------------------------------------------


def median(efforts: list[Effort], name: str) -> float:
    return float(statistics.median(getattr(e, name) for e in efforts))


def report(label: str, efforts: list[Effort]) -> dict[str, Any]:
    columns = ("total_s", "acting_s", "waiting_s", "keys", "clicks")
    print(f"\n{label}")
    print("  " + "".join(f"{c:>11}" for c in ("rep", *columns)))
    for i, e in enumerate(efforts, start=1):
        print(
            "  "
            + f"{i:>11}"
            + "".join(f"{getattr(e, c):>11.2f}" if c.endswith("_s") else f"{getattr(e, c):>11}" for c in columns)
        )
    medians = {c: median(efforts, c) for c in columns}
    print("  " + f"{'median':>11}" + "".join(f"{medians[c]:>11.2f}" for c in columns))
    first = efforts[0]
    print(f"  keys by phase (rep 1): {first.keys_by_phase}")
    for phase, actions in first.actions.items():
        print(f"    {phase}: {', '.join(actions)}")
    print(f"  seconds by phase (rep 1): { {k: round(v, 2) for k, v in first.seconds_by_phase.items()} }")
    for i, e in enumerate(efforts, start=1):
        for where in e.clicks_where:
            print(f"  rep {i} click: {where}")
        for note in e.notes:
            print(f"  rep {i} note: {note}")
    print(
        f"\n| {label} | {medians['total_s']:.2f} | {medians['acting_s']:.2f} | {medians['waiting_s']:.2f} | "
        f"{medians['keys']:g} | {medians['clicks']:g} |"
    )
    return medians


# --- main ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.setup:
        print(json.dumps(setup(json.loads(args.setup))))
        return 0
    refuse_shared(args.database_url, args.broker_url, example_broker=DEFAULT_BROKER_URL)
    ensure_database(args.database_url)
    flush_broker(args.broker_url)
    label = args.label or checkout_name(args.app_dir)
    log_dir = Path(tempfile.mkdtemp(prefix="effort-"))
    env = dict(os.environ)
    env.update(
        DATABASE_URL=args.database_url,
        CELERY_BROKER_URL=args.broker_url,
        CACHE_URL=args.broker_url,
        DJANGO_SETTINGS_MODULE="config.settings",
        PYTHONUNBUFFERED="1",
        DEBUG="0",
    )
    for name in ("REDIS_URL", "STREAM_REDIS_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"):
        env.pop(name, None)
    print(f"rater effort: {label}; logs in {log_dir}", flush=True)
    children: list[Child] = []
    completed = False
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=args.app_dir, env=env, check=True
        )
        children, base_url, model_url = start_stack(args, env, log_dir)
        efforts: list[Effort] = []
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                for rep in range(1, args.reps + 1):
                    run = time.strftime("%m%d%H%M%S") + uuid.uuid4().hex[:4]
                    spec = {
                        "run": run,
                        "app_dir": str(args.app_dir),
                        "base_url": model_url,
                        "words": args.words,
                        "password": PASSWORD,
                    }
                    account = run_setup(args, env, spec)
                    context = browser.new_context(viewport={"width": 1280, "height": 900})
                    try:
                        effort = converse(context.new_page(), base_url, account, args)
                    finally:
                        context.close()
                    votes, tags, status = check_database(args.database_url, account["slug"])
                    if (votes, tags, status) != (3, 3, "completed"):
                        raise RuntimeError(f"rep {rep}: stored {votes} votes, {tags} tags, conversation {status}")
                    efforts.append(effort)
                    print(
                        f"  rep {rep}: {effort.total_s:.2f} s (waiting {effort.waiting_s:.2f}), {effort.keys} keys, "
                        f"{effort.clicks} clicks; stored 3 votes, 3 tags, completed",
                        flush=True,
                    )
            finally:
                browser.close()
        medians = report(label, efforts)
        if args.json:
            payload = {
                "label": label,
                "args": {k: str(v) for k, v in vars(args).items() if k not in ("json", "setup")},
                "medians": medians,
                "reps": [{**asdict(e), "acting_s": e.acting_s} for e in efforts],
            }
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(payload, indent=2))
        completed = True
        return 0
    finally:
        stack_stop(children, args.broker_url, log_dir, keep_logs=args.keep_logs or not completed)


if __name__ == "__main__":
    sys.exit(main())
