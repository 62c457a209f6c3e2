"""Browser fixtures: headless Debian Chromium driven by Playwright's sync API.

Playwright's sync API keeps an asyncio loop running in the test's thread, and Django's ORM
refuses to run while a loop is running there (SynchronousOnlyOperation). The test process
therefore sets DJANGO_ALLOW_ASYNC_UNSAFE, while the worker and web server started here get it
explicitly unset, so the ASGI server still catches real async-safety bugs. The connections the
test opens meanwhile are closed before the loop stops (see `browser_page`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

# Records what the candidate cards showed, every time the DOM changed, so a test can tell
# whether text appeared while a candidate was still streaming (before the vote was possible).
STREAM_RECORDER = """
(() => {
  window.__cgSeen = [];
  const last = {};
  const record = () => {
    const fieldset = document.querySelector("#vote-form fieldset.choices");
    for (const card of document.querySelectorAll("#vote-form .candidate")) {
      const text = card.querySelector(".cand-text").textContent.trim();
      const key = card.dataset.status + ":" + text.length;
      if (last[card.id] === key) continue;
      last[card.id] = key;
      window.__cgSeen.push({
        id: card.id, status: card.dataset.status, len: text.length,
        voteEnabled: fieldset ? !fieldset.disabled : null, at: performance.now(),
      });
    }
  };
  new MutationObserver(record).observe(document, {
    subtree: true, childList: true, characterData: true, attributes: true,
    attributeFilter: ["data-status", "disabled"],
  });
})();
"""


@pytest.fixture(autouse=True)
def _orm_next_to_playwright(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def start_worker(start_worker: Callable[..., Any]) -> Callable[..., Any]:
    def start(*args: Any, **env: str) -> Any:
        return start_worker(*args, **{"DJANGO_ALLOW_ASYNC_UNSAFE": "", **env})

    return start


@pytest.fixture
def start_server(start_server: Callable[..., str]) -> Callable[..., str]:
    def start(**env: str) -> str:
        return start_server(**{"DJANGO_ALLOW_ASYNC_UNSAFE": "", **env})

    return start


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_failed] = report.failed
    return report


_failed = pytest.StashKey[bool]()


class BrowserRun:
    """The page plus what it reported: uncaught JS errors, console errors, dialogs, HTTP errors."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        self.dialogs: list[str] = []
        self.bad_responses: list[str] = []  # 4xx/5xx answers, but for the favicon the app has none of
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.on("console", lambda msg: msg.type == "error" and self.console_errors.append(msg.text))
        page.on("dialog", self._dialog)
        page.on("response", self._response)

    def _response(self, response: Any) -> None:
        if response.status >= 400 and not response.url.endswith("/favicon.ico"):
            self.bad_responses.append(f"{response.status} {response.request.method} {response.url}")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()


@pytest.fixture
def browser_page(
    start_server: Callable[..., str], request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[BrowserRun]:
    """A fresh headless Chromium page (closed before the server started by the test stops)."""
    from django.db import connections
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(15_000)
        context.add_init_script(STREAM_RECORDER)
        run = BrowserRun(context.new_page())
        try:
            yield run
        finally:
            if request.node.stash.get(_failed, False):
                _report_failure(run, tmp_path)
            context.close()
            browser.close()
            # While Playwright's loop runs, Django keeps this thread's connections in a separate
            # (context-local) store that pytest-django's teardown never sees: close them here.
            connections.close_all()


def _report_failure(run: BrowserRun, tmp_path: Path) -> None:
    """Print what helps to understand a failed browser test (pytest shows it with the failure)."""
    try:
        run.page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'failure.png'}")
        print(f"url: {run.page.url}\nhtml (tail):\n{run.page.content()[-3000:]}")
    except Exception as exc:  # the page may be gone
        print(f"(no screenshot: {exc})")
    print(f"page errors: {run.page_errors}\nconsole errors: {run.console_errors}\ndialogs: {run.dialogs}")
    print(f"HTTP errors: {run.bad_responses}")
    for log in sorted(tmp_path.glob("*.log")):
        print(f"--- {log.name} (tail) ---\n{log.read_text(errors='replace')[-3000:]}")
