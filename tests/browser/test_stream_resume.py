"""Streams resume in the browser (issue 11): the web server goes away while the rater's replies are waiting, comes
back on the same address, and the page (never reloaded) shows the replies stream in and the vote open."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from annotate.models import Turn
from tests.browser.test_rater_session import send_message, wait_until_votable
from tests.helpers import PASSWORD, child_env, log_in
from tests.processes import ChildProcess, free_port

pytestmark = [pytest.mark.browser]


def web_on(port: int, log_dir: Path) -> ChildProcess:
    argv = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
    child = ChildProcess("web", argv, child_env(DJANGO_ALLOW_ASYNC_UNSAFE=""), log_dir)
    child.wait_for("Application startup complete", timeout=60)
    return child


def test_a_waiting_page_resumes_its_stream_after_the_web_server_restarts(
    start_worker: Any, tiny_config: Any, make_study: Any, make_user: Any, browser_page: Any, tmp_path: Path
) -> None:
    config = tiny_config(max_new_tokens=200, min_new_tokens=200, temperature=0)
    study = make_study(configs=[config], candidates_per_turn=2)
    rater = make_user(password=PASSWORD)
    port = free_port()
    first = web_on(port, tmp_path)
    base = f"http://127.0.0.1:{port}"
    page = browser_page.page
    try:
        log_in(page, base, rater.username)
        page.goto(f"{base}/")
        page.locator(f"#start-{study.slug}").click()
        page.wait_for_url(re.compile(r"/c/\d+/$"))
        cards = send_message(page, "Hello there")
        page.evaluate("window.__sameDocument = true")  # gone if the page were reloaded
        # No worker yet: the replies wait, and the page says so
        assert "waiting for a worker" in page.locator(f"#{cards[0]['dom']} .state").inner_text()

        # When the web server goes away and comes back on the same address
        first.stop()
        second = web_on(port, tmp_path)
        try:
            # ... and a worker takes the replies
            start_worker(concurrency=1)

            # Then the page's stream reconnects by itself and shows them through to the open vote
            wait_until_votable(page, timeout_s=120)
            assert page.evaluate("window.__sameDocument") is True
            for card in cards:
                shown = page.locator(f"#{card['dom']} .cand-text").inner_text().strip()
                assert shown and shown == Turn.objects.get(pk=card["pk"]).text.strip()
        finally:
            second.stop()
    finally:
        first.stop()
