"""Streams resume in the browser (issue 11): the web server, or its database, goes away while the rater's replies
are waiting and comes back, and the page (never reloaded) shows the replies stream in and the vote open."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from annotate.models import Turn
from tests.browser.test_rater_session import send_message, wait_until_votable
from tests.faults import database_proxy
from tests.helpers import PASSWORD, child_env, log_in
from tests.processes import ChildProcess, free_port, wait_until

pytestmark = [pytest.mark.browser]


def web_on(port: int, log_dir: Path, **env: str) -> ChildProcess:
    argv = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port)]
    child = ChildProcess("web", argv, child_env(DJANGO_ALLOW_ASYNC_UNSAFE="", **env), log_dir)
    child.wait_for("Application startup complete", timeout=60)
    return child


def waiting_page(page: Any, base: str, rater: Any, study: Any) -> list[dict[str, Any]]:
    """Log in, start the study and send a message with no worker running: the replies wait, and the page says so.
    Returns the candidate cards; `window.__sameDocument` is gone if the page is ever reloaded."""
    log_in(page, base, rater.username)
    page.goto(f"{base}/")
    page.locator(f"#start-{study.slug}").click()
    page.wait_for_url(re.compile(r"/c/\d+/$"))
    cards = send_message(page, "Hello there")
    page.evaluate("window.__sameDocument = true")
    assert "waiting for a worker" in page.locator(f"#{cards[0]['dom']} .state").inner_text()
    return cards


def shows_the_replies_without_a_reload(page: Any, cards: list[dict[str, Any]]) -> None:
    """The page's stream reconnected by itself and showed every reply through to the open vote."""
    wait_until_votable(page, timeout_s=120)
    assert page.evaluate("window.__sameDocument") is True
    for card in cards:
        shown = page.locator(f"#{card['dom']} .cand-text").inner_text().strip()
        assert shown and shown == Turn.objects.get(pk=card["pk"]).text.strip()


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
        cards = waiting_page(page, base, rater, study)

        # When the web server goes away and comes back on the same address
        first.stop()
        second = web_on(port, tmp_path)
        try:
            # ... and a worker takes the replies
            start_worker(concurrency=1)

            # Then the page's stream reconnects by itself and shows them through to the open vote
            shows_the_replies_without_a_reload(page, cards)
        finally:
            second.stop()
    finally:
        first.stop()


def test_a_waiting_page_resumes_its_stream_after_its_database_was_away(
    start_worker: Any, tiny_config: Any, make_study: Any, make_user: Any, browser_page: Any, tmp_path: Path
) -> None:
    """The stream ends early when the database goes (retry later), its reconnection is refused with a 503 while
    the database is still away (EventSource gives up on an HTTP error: session.js tries again), and the page
    catches up once it is back."""
    config = tiny_config(max_new_tokens=200, min_new_tokens=200, temperature=0)
    study = make_study(configs=[config], candidates_per_turn=2)
    rater = make_user(password=PASSWORD)
    proxy, through_proxy = database_proxy()
    port = free_port()
    web = web_on(port, tmp_path, DATABASE_URL=through_proxy, DB_POOL="0", STREAM_QUEUE_SECONDS="0.5")
    base = f"http://127.0.0.1:{port}"
    page = browser_page.page
    try:
        cards = waiting_page(page, base, rater, study)

        # When the database goes away under the open stream, and is still away when the browser comes back
        proxy.cut()
        wait_until(lambda: "ended early, the database is unavailable" in web.output(), timeout=30, what="the end")
        wait_until(lambda: re.search(r"GET /c/\d+/stream/ HTTP/1.1\" 503", web.output()), timeout=30, what="503")
        # ... then comes back, and a worker takes the replies
        proxy.resume()
        start_worker(concurrency=1)

        # Then the page opens its stream again by itself and shows the replies through to the open vote
        shows_the_replies_without_a_reload(page, cards)
        assert "Exception in ASGI application" not in web.output()
    finally:
        web.stop()
        proxy.close()
